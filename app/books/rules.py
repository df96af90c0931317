"""The book and code rules as SQL fragments, so every statement states them the same way.

All of them read the database clock (`now()`). Aliases: `c` is a code, `b` its book.

Lock expiry is lazy: a lock is live only while `locked_until > now()`, and nothing rewrites
the row when it lapses. A lapsed lock is no lock: the code reads as `assigned`, its holder
may lock or redeem it without the old `lock_id`, and a stale `lock_id` is ignored.
"""

from __future__ import annotations

# A code is 1 to `CODE_MAX_LENGTH` of A-Z a-z 0-9 - _, stored upper-case (the table's CHECK,
# migration 0002, says the same for stored codes).
CODE_MAX_LENGTH = 64
# The longest lock a book may set, and so the longest a code stays locked without a redeem
# (the table's CHECK, migration 0002, says the same).
LOCK_TTL_MAX_SECONDS = 86_400

# A book hands out and redeems codes only while active and inside its validity window.
BOOK_ACTIVE = (
    "(b.status = 'active' AND (b.starts_at IS NULL OR b.starts_at <= now())"
    " AND (b.expires_at IS NULL OR b.expires_at > now()))"
)

LOCK_LIVE = "(c.status = 'locked' AND c.locked_until > now())"
LOCK_LAPSED = "(c.status = 'locked' AND c.locked_until <= now())"

# What a reader sees: a lapsed lock reads as `assigned`, with no `locked_until`.
STATUS = f"(CASE WHEN {LOCK_LAPSED} THEN 'assigned' ELSE c.status END)"
LOCKED_UNTIL = f"(CASE WHEN {LOCK_LIVE} THEN c.locked_until END)"

# The codes that read as `assigned` (the filter form of `STATUS = 'assigned'`, which keeps
# each condition a plain column test).
READS_ASSIGNED = f"(c.status = 'assigned' OR {LOCK_LAPSED})"


def open_to(lock_id: str) -> str:
    """The code may be locked or redeemed by a caller presenting `lock_id` (a SQL
    parameter): it reads as assigned, or it is locked with that very lock."""
    return f"({READS_ASSIGNED} OR (c.status = 'locked' AND c.lock_id = {lock_id}))"


# Every book's codes counted by stored state, as `book_code_counts` keeps them (a lapsed lock
# is still `held` there): what the checker compares the counters with, and a recount.
CODES_BY_STORED_STATE = """
SELECT book_id,
       count(*) FILTER (WHERE status = 'unassigned') AS unassigned,
       count(*) FILTER (WHERE status IN ('assigned', 'locked')) AS held,
       count(*) FILTER (WHERE status = 'redeemed') AS redeemed
FROM codes GROUP BY book_id
"""
