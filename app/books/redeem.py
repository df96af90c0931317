"""Lock, unlock, redeem and roll back: each a single conditional UPDATE whose guard is the
whole rule (redeem first takes its holder's advisory lock when the book limits redemptions
per user); when it touches no row the code is read to say why. Validate is that read alone.

Lock expiry is lazy and on the database clock; `rules` says once what a live lock is (a
lapsed lock is no lock: no `lock_id` needed, a stale one ignored).
"""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import orjson

from app.books.errors import (
    BookInactive,
    CodeLocked,
    CodeNotAssigned,
    NotRedeemed,
    RedemptionLimitReached,
    UserRedemptionLimitReached,
)
from app.books.rules import BOOK_ACTIVE, LOCK_LIVE, open_to
from app.books.schemas import CodeOut, LockedCodeOut, RedeemOut
from app.books.service import CODE_COLUMNS, code_as, code_out, normalize_code
from app.core.locking import LockNamespace, xact_lock_sql
from app.core.problems import NotFound, ProblemError, ValidationFailed

# Everything needed to explain a refusal, read once after a guarded UPDATE missed.
_STATE = f"""
SELECT c.code, c.status, c.user_id, c.redemptions, c.lock_id,
       {LOCK_LIVE} AS lock_live,
       b.max_redemptions_per_code, b.max_redemptions_per_user, b.lock_ttl_seconds,
       {BOOK_ACTIVE} AS book_active,
       CASE WHEN b.max_redemptions_per_user IS NULL OR c.user_id IS NULL THEN 0
            ELSE (SELECT coalesce(sum(x.redemptions), 0) FROM codes x
                  WHERE x.user_id = c.user_id AND x.book_id = c.book_id) END AS user_redemptions
FROM codes c JOIN books b ON b.id = c.book_id
WHERE c.code = $1
"""


async def _state(conn: asyncpg.Connection, code: str, owner: uuid.UUID | None) -> asyncpg.Record:
    row = await conn.fetchrow(_STATE, code)
    if row is None or (owner is not None and row["user_id"] != owner):
        raise NotFound(f"No code {code}.")
    return row


def redeem_problem(row: asyncpg.Record, lock_id: uuid.UUID | None) -> ProblemError | None:
    """Why redeeming this code now would fail, or None if it would succeed."""
    if row["status"] == "unassigned":
        return CodeNotAssigned(f"Code {row['code']} is not assigned to anyone.")
    if row["status"] == "redeemed" or row["redemptions"] >= row["max_redemptions_per_code"]:
        return RedemptionLimitReached(f"Code {row['code']} has no redemptions left.")
    if not row["book_active"]:
        return BookInactive("The book is paused, archived or outside its validity window.")
    if row["lock_live"] and row["lock_id"] != lock_id:
        return CodeLocked(f"Code {row['code']} is locked; redeem it with its lock_id.")
    limit = row["max_redemptions_per_user"]
    if limit is not None and row["user_redemptions"] >= limit:
        return UserRedemptionLimitReached("The holder reached the book's redemptions per user.")
    return None


# --- lock / unlock ------------------------------------------------------------------------

_LOCK = f"""
WITH done AS (
    UPDATE codes c
    SET status = 'locked',
        locked_until = now() + make_interval(secs => coalesce($3::int, b.lock_ttl_seconds)),
        lock_id = CASE WHEN {LOCK_LIVE} THEN c.lock_id ELSE gen_random_uuid() END,
        updated_at = now()
    FROM books b
    WHERE c.code = $1 AND b.id = c.book_id AND ($2::uuid IS NULL OR c.user_id = $2)
      AND {open_to("$4")}
      AND coalesce($3::int, 0) <= b.lock_ttl_seconds
      AND {BOOK_ACTIVE}
    RETURNING c.id AS code_id, c.lock_id, {CODE_COLUMNS}
),
logged AS (
    INSERT INTO redemption_history (code_id, book_id, user_id, action, actor_id, details)
    SELECT code_id, book_id, user_id, 'locked', $5,
           jsonb_build_object('locked_until', locked_until, 'extended', lock_id = $4)
    FROM done
)
SELECT * FROM done
"""


async def lock(
    conn: asyncpg.Connection,
    code: str,
    *,
    owner: uuid.UUID | None,
    actor_id: uuid.UUID,
    ttl_seconds: int | None,
    lock_id: uuid.UUID | None,
) -> LockedCodeOut:
    """Hold an assigned code for checkout; the live `lock_id` extends an existing lock."""
    wanted = normalize_code(code)
    row = await conn.fetchrow(_LOCK, wanted, owner, ttl_seconds, lock_id, actor_id)
    if row is not None:
        return code_as(LockedCodeOut, row)
    state = await _state(conn, wanted, owner)
    if ttl_seconds is not None and ttl_seconds > state["lock_ttl_seconds"]:
        raise ValidationFailed(
            f"ttl_seconds must be at most the book's lock_ttl_seconds"
            f" ({state['lock_ttl_seconds']}).",
            errors=[{"loc": ["body", "ttl_seconds"], "msg": "greater than the book's lock TTL"}],
        )
    if state["lock_live"] and state["lock_id"] != lock_id:
        raise CodeLocked(f"Code {wanted} is already locked.")
    problem = redeem_problem(state, lock_id)
    raise problem or CodeNotAssigned(f"Code {wanted} cannot be locked.")


_UNLOCK = f"""
WITH done AS (
    UPDATE codes c
    SET status = 'assigned', locked_until = NULL, lock_id = NULL, updated_at = now()
    FROM books b
    WHERE c.code = $1 AND b.id = c.book_id AND ($2::uuid IS NULL OR c.user_id = $2)
      AND {LOCK_LIVE} AND ($3::boolean OR c.lock_id = $4)
    RETURNING c.id AS code_id, {CODE_COLUMNS}
),
logged AS (
    INSERT INTO redemption_history (code_id, book_id, user_id, action, actor_id)
    SELECT code_id, book_id, user_id, 'unlocked', $5 FROM done
)
SELECT * FROM done
"""


async def unlock(
    conn: asyncpg.Connection,
    code: str,
    *,
    owner: uuid.UUID | None,
    actor_id: uuid.UUID,
    lock_id: uuid.UUID | None,
) -> CodeOut:
    """Release a live lock (the owner needs its `lock_id`, an admin does not); releasing a
    code that is not locked is a harmless no-op."""
    wanted = normalize_code(code)
    row = await conn.fetchrow(_UNLOCK, wanted, owner, owner is None, lock_id, actor_id)
    if row is not None:
        return code_out(row)
    state = await _state(conn, wanted, owner)
    if state["lock_live"]:
        raise CodeLocked(f"Code {wanted} is locked with another lock_id.")
    current = await conn.fetchrow(
        f"SELECT {CODE_COLUMNS} FROM codes c JOIN books b ON b.id = c.book_id WHERE c.code = $1",
        wanted,
    )
    assert current is not None
    return code_out(current)


# --- redeem / validate / rollback ---------------------------------------------------------

# Taken only when the book limits redemptions per user: it serialises that holder's
# redemptions in the book so the count below sees every earlier one.
_LOCK_HOLDER = f"""
SELECT {xact_lock_sql(LockNamespace.BOOK_USER, "c.book_id::text || ':' || c.user_id::text")}
FROM codes c JOIN books b ON b.id = c.book_id
WHERE c.code = $1 AND c.user_id IS NOT NULL AND b.max_redemptions_per_user IS NOT NULL
"""

_REDEEM = f"""
WITH used AS (
    SELECT coalesce(sum(x.redemptions), 0) AS n
    FROM codes c JOIN codes x ON x.user_id = c.user_id AND x.book_id = c.book_id
    WHERE c.code = $1
),
done AS (
    UPDATE codes c
    SET redemptions = c.redemptions + 1,
        status = CASE WHEN c.redemptions + 1 >= b.max_redemptions_per_code THEN 'redeemed'
                      ELSE 'assigned' END,
        locked_until = NULL, lock_id = NULL, updated_at = now()
    FROM books b
    WHERE c.code = $1 AND b.id = c.book_id AND ($2::uuid IS NULL OR c.user_id = $2)
      AND {open_to("$3")}
      AND c.redemptions < b.max_redemptions_per_code
      AND {BOOK_ACTIVE}
      AND (b.max_redemptions_per_user IS NULL
           OR (SELECT n FROM used) < b.max_redemptions_per_user)
    RETURNING c.id AS code_id, c.code, c.book_id, c.user_id, c.redemptions,
              b.max_redemptions_per_code - c.redemptions AS redemptions_left
),
logged AS (
    INSERT INTO redemption_history (code_id, book_id, user_id, action, actor_id, details)
    SELECT code_id, book_id, user_id, 'redeemed', $4, $5::jsonb FROM done
    RETURNING id
)
SELECT done.code, done.redemptions, done.redemptions_left, logged.id AS redemption_id
FROM done, logged
"""


async def redeem(
    conn: asyncpg.Connection,
    code: str,
    *,
    owner: uuid.UUID | None,
    actor_id: uuid.UUID,
    lock_id: uuid.UUID | None,
    order_ref: str | None,
    metadata: dict[str, Any] | None,
) -> RedeemOut:
    """Use the code once; it becomes `redeemed` at the book's redemptions per code."""
    wanted = normalize_code(code)
    await conn.execute(_LOCK_HOLDER, wanted)
    details: dict[str, Any] = {}
    if order_ref is not None:
        details["order_ref"] = order_ref
    if metadata is not None:
        details["metadata"] = metadata
    row = await conn.fetchrow(
        _REDEEM, wanted, owner, lock_id, actor_id, orjson.dumps(details).decode()
    )
    if row is not None:
        return RedeemOut(**dict(row))
    state = await _state(conn, wanted, owner)
    raise redeem_problem(state, lock_id) or CodeLocked(f"Code {wanted} cannot be redeemed now.")


async def validate(
    conn: asyncpg.Connection, code: str, *, owner: uuid.UUID | None, lock_id: uuid.UUID | None
) -> str | None:
    """Dry-run redeem: the slug of the problem redeem would raise now, or None."""
    state = await _state(conn, normalize_code(code), owner)
    problem = redeem_problem(state, lock_id)
    return problem.slug if problem is not None else None


_ROLLBACK = f"""
WITH target AS (
    SELECT h.id, h.book_id, h.code_id FROM redemption_history h
    JOIN codes c ON c.book_id = h.book_id AND c.id = h.code_id
    WHERE h.id = $2 AND h.action = 'redeemed' AND c.code = $1
      AND NOT EXISTS (SELECT 1 FROM redemption_history r WHERE r.reverses_id = h.id)
),
done AS (
    UPDATE codes c
    SET redemptions = c.redemptions - 1,
        status = CASE WHEN c.status = 'redeemed' THEN 'assigned' ELSE c.status END,
        updated_at = now()
    FROM target t, books b
    WHERE c.book_id = t.book_id AND c.id = t.code_id AND b.id = c.book_id
      AND c.redemptions > 0
    RETURNING c.id AS code_id, t.id AS reverses_id, {CODE_COLUMNS}
),
logged AS (
    INSERT INTO redemption_history
        (code_id, book_id, user_id, action, actor_id, reverses_id, details)
    SELECT code_id, book_id, user_id, 'rolled_back', $3, reverses_id,
           jsonb_strip_nulls(jsonb_build_object('redemption_id', reverses_id,
                                                'reason', $4::text))
    FROM done
)
SELECT * FROM done
"""


async def rollback(
    conn: asyncpg.Connection,
    code: str,
    *,
    redemption_id: int,
    actor_id: uuid.UUID,
    reason: str | None,
) -> CodeOut:
    """Reverse one redemption (order cancelled, payment failed), at most once."""
    wanted = normalize_code(code)
    try:
        row = await conn.fetchrow(_ROLLBACK, wanted, redemption_id, actor_id, reason)
    except asyncpg.UniqueViolationError as exc:  # a concurrent rollback of the same one won
        raise NotRedeemed(f"Redemption {redemption_id} is already rolled back.") from exc
    if row is not None:
        return code_out(row)
    if await conn.fetchval("SELECT id FROM codes WHERE code = $1", wanted) is None:
        raise NotFound(f"No code {wanted}.")
    raise NotRedeemed(
        f"Redemption {redemption_id} of code {wanted} is unknown or already rolled back."
    )
