"""Handing codes to users: at random, by code, and in bulk to a segment or a list.

Per-user limits are a count-then-act, so the same (book, user) is serialised with a
transaction-scoped advisory lock taken in its own statement *before* the counting CTE
(under READ COMMITTED a statement's snapshot predates the locks it waits for). Single
assigns hold the book key shared; `distribute` holds it exclusively.
"""

from __future__ import annotations

import textwrap
import uuid
from collections.abc import Sequence

import asyncpg
from sqlalchemy.ext.asyncio import AsyncSession

from app.books.errors import BookExhausted, BookInactive, CodeLimitReached, CodeUnavailable
from app.books.rules import BOOK_ACTIVE
from app.books.schemas import CodeOut, DistributeOut, DistributePreviewOut, Skipped
from app.books.service import CODE_COLUMNS, code_out, normalize_code
from app.core.db import raw_connection
from app.core.locking import LockNamespace, xact_lock_sql
from app.core.plpgsql import RETRY_PAUSES, named, uuid_array
from app.core.problems import Busy, NotFound

_BOOK_KEY = "$1::uuid::text"
_BOOK_USER_KEY = "$1::uuid::text || ':' || $2::uuid::text"

LOCK_BOOK_USER = (
    f"SELECT {xact_lock_sql(LockNamespace.BOOK, _BOOK_KEY, shared=True)},"
    f" {xact_lock_sql(LockNamespace.BOOK_USER, _BOOK_USER_KEY)}"
)

# The book, the target user and the limit check, shared by both single assigns.
_GUARDS = f"""
book AS (
    SELECT b.id, b.max_codes_per_user, b.max_redemptions_per_code, {BOOK_ACTIVE} AS active
    FROM books b WHERE b.id = $1
),
target AS (SELECT u.id FROM users u WHERE u.id = $2),
held AS (SELECT count(*) AS n FROM codes WHERE user_id = $2 AND book_id = $1),
allowed AS (
    SELECT 1 FROM book, held, target
    WHERE book.active
      AND (book.max_codes_per_user IS NULL OR held.n < book.max_codes_per_user)
)"""

_OUTCOME = """
SELECT claimed.*,
       (SELECT active FROM book) AS book_active,
       EXISTS (SELECT 1 FROM target) AS user_exists,
       EXISTS (SELECT 1 FROM allowed) AS allowed
FROM (SELECT 1) AS one LEFT JOIN claimed ON true
"""

_CLAIM = """
claimed AS (
    UPDATE codes c
    SET status = 'assigned', user_id = $2, assigned_at = now(), updated_at = now()
    FROM book b
    WHERE c.book_id = $1 AND c.id IN (SELECT id FROM {source}) AND b.id = c.book_id {extra}
    RETURNING c.id AS code_id, {columns}
),
logged AS (
    INSERT INTO redemption_history (code_id, book_id, user_id, action, actor_id, details)
    SELECT code_id, book_id, user_id, 'assigned', $4, $5::jsonb FROM claimed
)"""


# Random start `$3` on the indexed `rand_key`: the first free code at or after it, else the
# first before it. `SKIP LOCKED` lets concurrent assigns take different rows without
# waiting on each other; when every free row it met was locked, `free_left` says whether
# any free row exists at all (rows held by in-flight claims still read as free).
_ASSIGN_RANDOM = f"""
WITH {_GUARDS},
hi AS MATERIALIZED (
    SELECT c.id FROM codes c
    WHERE c.book_id = $1 AND c.status = 'unassigned' AND c.rand_key >= $3
      AND EXISTS (SELECT 1 FROM allowed)
    ORDER BY c.rand_key LIMIT 1 FOR UPDATE OF c SKIP LOCKED
),
lo AS MATERIALIZED (
    SELECT c.id FROM codes c
    WHERE c.book_id = $1 AND c.status = 'unassigned' AND c.rand_key < $3
      AND EXISTS (SELECT 1 FROM allowed) AND NOT EXISTS (SELECT 1 FROM hi)
    ORDER BY c.rand_key LIMIT 1 FOR UPDATE OF c SKIP LOCKED
),
picked AS (SELECT id FROM hi UNION ALL SELECT id FROM lo),
{_CLAIM.format(source="picked", extra="", columns=CODE_COLUMNS)}
SELECT claimed.*,
       (SELECT active FROM book) AS book_active,
       EXISTS (SELECT 1 FROM target) AS user_exists,
       EXISTS (SELECT 1 FROM allowed) AS allowed,
       CASE WHEN NOT EXISTS (SELECT 1 FROM claimed) THEN EXISTS (
           SELECT 1 FROM codes f WHERE f.book_id = $1 AND f.status = 'unassigned')
       END AS free_left
FROM (SELECT 1) AS one LEFT JOIN claimed ON true
"""

_ASSIGN_SPECIFIC = f"""
WITH {_GUARDS},
wanted AS (SELECT c.id FROM codes c WHERE c.code = $3),
{
    _CLAIM.format(
        source="wanted",
        extra="AND c.status = 'unassigned' AND EXISTS (SELECT 1 FROM allowed)",
        columns=CODE_COLUMNS,
    )
}
{_OUTCOME}"""


def _raise_for(row: asyncpg.Record, book_id: uuid.UUID, user_id: uuid.UUID) -> None:
    if row["book_active"] is None:
        raise NotFound(f"No book {book_id}.")
    if not row["user_exists"]:
        raise NotFound(f"No user {user_id}.")
    if not row["book_active"]:
        raise BookInactive("The book is paused, archived or outside its validity window.")


_NAMES = ("p_book", "p_user", "p_start", "p_actor", "p_details")

# One random assign in a plpgsql body: the claim from a random start, run again from a new
# start while free codes exist but every one met was being claimed; leaves its answer in `c`.
_ASSIGN_ONE = f"""    FOREACH pause IN ARRAY {RETRY_PAUSES} LOOP
        p_start := random();
        {named(_ASSIGN_RANDOM, _NAMES)}
        INTO c;
        EXIT WHEN pause IS NULL OR c.code IS NOT NULL OR NOT c.allowed OR NOT c.free_left;
        PERFORM pg_sleep(pause * (0.5 + random()));
    END LOOP;"""
_ASSIGN_ONE_IN_LOOP = textwrap.indent(_ASSIGN_ONE, "    ")

# One round trip: the book's shared lock and the caller's, then the claim from a random
# start, each its own statement inside one plpgsql call (so the claim's snapshot follows the
# locks), the claim run again from a new start while free rows exist but every one met was
# being claimed (the pauses of `CLAIM_RETRY_DELAYS`). The schema holds the function as
# migration 0012 wrote it; a test checks it is this text, so a change to the statements
# above needs a migration that replaces it.
ASSIGN_FUNCTION_BODY = f"""
#variable_conflict use_column
DECLARE
    c record;
    p_start float8;
    pause float8;
BEGIN
    PERFORM {named(LOCK_BOOK_USER.removeprefix("SELECT "), _NAMES)};
{_ASSIGN_ONE}
    RETURN QUERY SELECT c.code_id, c.code, c.book_id, c.status, c.user_id, c.assigned_at,
        c.locked_until, c.redemptions, c.redemptions_left, c.book_active, c.user_exists,
        c.allowed, c.free_left;
END
"""
ASSIGN_FUNCTION = f"""
CREATE OR REPLACE FUNCTION book_assign_random(p_book uuid, p_user uuid, p_actor uuid,
                                              p_details jsonb)
RETURNS TABLE (code_id bigint, code text, book_id uuid, status text, user_id uuid,
               assigned_at timestamptz, locked_until timestamptz, redemptions integer,
               redemptions_left integer, book_active boolean, user_exists boolean,
               allowed boolean, free_left boolean)
LANGUAGE plpgsql AS $assign${ASSIGN_FUNCTION_BODY}$assign$
"""
_ASSIGN = "SELECT * FROM book_assign_random($1, $2, $3, $4)"


_OUT_COLUMNS = """c.code_id, c.code, c.book_id, c.status, c.user_id, c.assigned_at,
        c.locked_until, c.redemptions, c.redemptions_left, c.book_active, c.user_exists,
        c.allowed, c.free_left"""
_RESULT_COLUMNS = """code_id bigint, code text, book_id uuid, status text, user_id uuid,
               assigned_at timestamptz, locked_until timestamptz, redemptions integer,
               redemptions_left integer, book_active boolean, user_exists boolean,
               allowed boolean, free_left boolean"""

# Coalesced assigns of one book (app/core/coalesce.py): one call for a batch of requests, in
# one transaction. The book's shared lock, then every caller's lock in uuid order (batches
# that share users take them in the same order: no deadlock; a single assign takes one).
# Then one set-based statement serves every request the book and its limit allow at once:
# a user's requests are ranked in arrival order and allowed while the codes they hold plus
# their rank stay within `max_codes_per_user` (two requests with room for one: the first),
# and the allowed requests take, in arrival order, the free codes met from one random start
# (`SKIP LOCKED`, wrapping round as the single claim does). Every request it did not serve
# (a limit, a paused book, a missing user, or no free code met) then runs alone, in arrival
# order, with the single assign's statement and pauses, which decides its answer exactly as
# for a request on its own; it sees the claims of the batch before it.
_ASSIGN_SET = f"""
WITH book AS (
    SELECT b.id, b.max_codes_per_user, b.max_redemptions_per_code, {BOOK_ACTIVE} AS active
    FROM books b WHERE b.id = $1
),
req AS (
    SELECT r.ord::integer AS ord, r.user_id, r.actor_id,
           row_number() OVER (PARTITION BY r.user_id ORDER BY r.ord) AS nth
    FROM unnest($2::uuid[], $3::uuid[]) WITH ORDINALITY AS r(user_id, actor_id, ord)
),
held AS (
    SELECT c.user_id, count(*) AS n FROM codes c
    WHERE c.book_id = $1 AND c.user_id IN (SELECT user_id FROM req)
      AND (SELECT max_codes_per_user FROM book) IS NOT NULL  -- no limit: nothing to count
    GROUP BY c.user_id
),
allowed AS MATERIALIZED (
    SELECT q.ord, q.user_id, q.actor_id, row_number() OVER (ORDER BY q.ord) AS slot
    FROM req q
    JOIN users u ON u.id = q.user_id
    CROSS JOIN book
    LEFT JOIN held h ON h.user_id = q.user_id
    WHERE book.active
      AND (book.max_codes_per_user IS NULL
           OR coalesce(h.n, 0) + q.nth <= book.max_codes_per_user)
),
hi AS MATERIALIZED (
    SELECT c.id, c.rand_key FROM codes c
    WHERE c.book_id = $1 AND c.status = 'unassigned' AND c.rand_key >= $4
    ORDER BY c.rand_key LIMIT (SELECT count(*) FROM allowed) FOR UPDATE OF c SKIP LOCKED
),
lo AS MATERIALIZED (
    SELECT c.id, c.rand_key FROM codes c
    WHERE c.book_id = $1 AND c.status = 'unassigned' AND c.rand_key < $4
    ORDER BY c.rand_key LIMIT (SELECT count(*) FROM allowed) - (SELECT count(*) FROM hi)
    FOR UPDATE OF c SKIP LOCKED
),
picked AS (
    SELECT p.id, row_number() OVER (ORDER BY p.part, p.rand_key) AS slot
    FROM (SELECT id, rand_key, 1 AS part FROM hi UNION ALL SELECT id, rand_key, 2 FROM lo) p
),
pairs AS (
    SELECT a.ord, a.user_id, a.actor_id, p.id FROM allowed a JOIN picked p USING (slot)
),
claimed AS (
    UPDATE codes c
    SET status = 'assigned', user_id = pairs.user_id, assigned_at = now(), updated_at = now()
    FROM pairs, book b
    WHERE c.book_id = $1 AND c.id = pairs.id AND b.id = c.book_id
    RETURNING pairs.ord, pairs.actor_id, c.id AS code_id, {CODE_COLUMNS}
),
logged AS (
    INSERT INTO redemption_history (code_id, book_id, user_id, action, actor_id, details)
    SELECT code_id, book_id, user_id, 'assigned', actor_id, $5::jsonb FROM claimed
)
SELECT ord, code_id, code, book_id, status, user_id, assigned_at, locked_until, redemptions,
       redemptions_left
FROM claimed
"""
_SET_NAMES = ("p_book", "p_users", "p_actors", "p_start", "p_details")
ASSIGN_BATCH_FUNCTION_BODY = f"""
#variable_conflict use_column
DECLARE
    c record;
    i integer;
    p_user uuid;
    p_actor uuid;
    p_start float8;
    pause float8;
    served integer[] := '{{}}';
BEGIN
    PERFORM {xact_lock_sql(LockNamespace.BOOK, "p_book::uuid::text", shared=True)};
    FOR p_user IN SELECT DISTINCT u FROM unnest(p_users) AS u ORDER BY u LOOP
        PERFORM {named(xact_lock_sql(LockNamespace.BOOK_USER, _BOOK_USER_KEY), _NAMES)};
    END LOOP;
    p_start := random();
    FOR c IN {named(_ASSIGN_SET, _SET_NAMES)}
    LOOP
        served := served || c.ord;
        RETURN QUERY SELECT c.ord, c.code_id, c.code, c.book_id, c.status, c.user_id,
            c.assigned_at, c.locked_until, c.redemptions, c.redemptions_left, true, true, true,
            NULL::boolean;
    END LOOP;
    FOR i IN 1 .. cardinality(p_users) LOOP
        CONTINUE WHEN i = ANY (served);
        p_user := p_users[i];
        p_actor := p_actors[i];
{_ASSIGN_ONE_IN_LOOP}
        RETURN QUERY SELECT i, {_OUT_COLUMNS};
    END LOOP;
END
"""
ASSIGN_BATCH_FUNCTION = f"""
CREATE OR REPLACE FUNCTION book_assign_random_batch(p_book uuid, p_users uuid[],
                                                    p_actors uuid[], p_details jsonb)
RETURNS TABLE (ord integer, {_RESULT_COLUMNS})
LANGUAGE plpgsql AS $assign${ASSIGN_BATCH_FUNCTION_BODY}$assign$
"""
_ASSIGN_BATCH = (
    "SELECT * FROM book_assign_random_batch($1, $2::text::uuid[], $3::text::uuid[], $4)"
    " ORDER BY ord"
)


def _assigned(row: asyncpg.Record, book_id: uuid.UUID, user_id: uuid.UUID) -> CodeOut:
    """The code a random assign claimed, or the problem it answers."""
    if row["code"] is not None:
        return code_out(row)
    _raise_for(row, book_id, user_id)
    if not row["allowed"]:
        raise CodeLimitReached("The user already holds the most codes this book allows.")
    if row["free_left"]:
        raise Busy("Every free code is being claimed right now; retry shortly.")
    raise BookExhausted("The book has no unassigned code left.")


async def assign_random(
    conn: asyncpg.Connection, book_id: uuid.UUID, user_id: uuid.UUID, actor_id: uuid.UUID
) -> CodeOut:
    """Give `user_id` a random free code of the book (one call, no book-wide lock)."""
    row = await conn.fetchrow(_ASSIGN, book_id, user_id, actor_id, "{}")
    assert row is not None
    return _assigned(row, book_id, user_id)


async def assign_random_batch(
    conn: asyncpg.Connection, book_id: uuid.UUID, requests: Sequence[tuple[uuid.UUID, uuid.UUID]]
) -> list[CodeOut | Exception]:
    """Random assigns of one book for a batch of `(user, actor)` requests, in one call: each
    request's code or the problem it alone would have got, in order."""
    users = [user for user, _ in requests]
    actors = [actor for _, actor in requests]
    rows = await conn.fetch(_ASSIGN_BATCH, book_id, uuid_array(users), uuid_array(actors), "{}")
    assert len(rows) == len(requests)
    outcomes: list[CodeOut | Exception] = []
    for row, user in zip(rows, users, strict=True):
        try:
            outcomes.append(_assigned(row, book_id, user))
        except Exception as exc:  # a problem for this request only
            outcomes.append(exc)
    return outcomes


async def assign_code(
    conn: asyncpg.Connection, code: str, user_id: uuid.UUID, actor_id: uuid.UUID
) -> CodeOut:
    """Give `user_id` this specific code, if nobody holds it."""
    wanted = normalize_code(code)
    book_id = await conn.fetchval("SELECT book_id FROM codes WHERE code = $1", wanted)
    if book_id is None:
        raise NotFound(f"No code {wanted}.")
    await conn.execute(LOCK_BOOK_USER, book_id, user_id)
    row = await conn.fetchrow(_ASSIGN_SPECIFIC, book_id, user_id, wanted, actor_id, "{}")
    assert row is not None
    if row["code"] is not None:
        return code_out(row)
    _raise_for(row, book_id, user_id)
    status = await conn.fetchval("SELECT status FROM codes WHERE code = $1", wanted)
    if status != "unassigned":
        raise CodeUnavailable(f"Code {wanted} is already assigned.")
    raise CodeLimitReached("The user already holds the most codes this book allows.")


# --- distribute ----------------------------------------------------------------------------

_LOCK_BOOK = f"SELECT {xact_lock_sql(LockNamespace.BOOK, _BOOK_KEY)}"

_SEGMENT_USERS = """
SELECT m.user_id AS id FROM segments s JOIN segment_members m ON m.segment_id = s.id
WHERE s.id = $2 AND s.kind = 'static'
UNION ALL
SELECT u.id FROM segments s JOIN users u
  ON segment_contains(s.kind, s.rules, s.id, u.id, u.tags, u.birth_date)
WHERE s.id = $2 AND s.kind = 'rule'
"""

_LISTED_USERS = "SELECT u.id FROM users u WHERE u.id = ANY($2::uuid[])"

# One set-based statement: eligible users under their limit, in ascending id, paired by
# row number with free codes; the book is held exclusively, so no single assign interferes.
_DISTRIBUTE = """
WITH book AS (SELECT b.id, b.max_codes_per_user FROM books b WHERE b.id = $1),
candidates AS ({users}),
counted AS (
    SELECT cand.id,
           (SELECT count(*) FROM codes x WHERE x.user_id = cand.id AND x.book_id = $1) AS held
    FROM candidates cand
),
eligible AS (
    SELECT counted.id, row_number() OVER (ORDER BY counted.id) AS rn
    FROM counted, book
    WHERE book.max_codes_per_user IS NULL OR counted.held < book.max_codes_per_user
),
free AS MATERIALIZED (
    SELECT f.id, row_number() OVER (ORDER BY f.rand_key) AS rn
    FROM (
        SELECT c.id, c.rand_key FROM codes c
        WHERE c.book_id = $1 AND c.status = 'unassigned'
        ORDER BY c.rand_key
        LIMIT (SELECT count(*) FROM eligible)
        FOR UPDATE OF c SKIP LOCKED
    ) AS f
),
pairs AS (SELECT e.id AS user_id, f.id AS code_id FROM eligible e JOIN free f USING (rn)),
claimed AS (
    UPDATE codes c
    SET status = 'assigned', user_id = p.user_id, assigned_at = now(), updated_at = now()
    FROM pairs p WHERE c.book_id = $1 AND c.id = p.code_id AND c.status = 'unassigned'
    RETURNING c.id, c.book_id, c.user_id
),
logged AS (
    INSERT INTO redemption_history (code_id, book_id, user_id, action, actor_id, details)
    SELECT id, book_id, user_id, 'assigned', $3, '{{"distribute": true}}'::jsonb FROM claimed
)
SELECT (SELECT count(*) FROM candidates) AS candidates,
       (SELECT count(*) FROM eligible) AS eligible,
       (SELECT count(*) FROM claimed) AS assigned
"""


# The same audience and limits as `_DISTRIBUTE`, counted without claiming anything: free
# codes from the kept counts, so a preview reads no code rows of the book.
_PREVIEW = """
WITH book AS (SELECT b.id, b.max_codes_per_user FROM books b WHERE b.id = $1),
candidates AS ({users}),
counted AS (
    SELECT cand.id,
           (SELECT count(*) FROM codes x WHERE x.user_id = cand.id AND x.book_id = $1) AS held
    FROM candidates cand
),
eligible AS (
    SELECT counted.id FROM counted, book
    WHERE book.max_codes_per_user IS NULL OR counted.held < book.max_codes_per_user
)
SELECT (SELECT count(*) FROM candidates) AS candidates,
       (SELECT count(*) FROM eligible) AS eligible,
       (SELECT count(*) FROM counted WHERE held > 0) AS holding,
       (SELECT coalesce(sum(unassigned), 0)::bigint FROM book_code_counts WHERE book_id = $1)
           AS free
"""


async def _audience(
    conn: asyncpg.Connection,
    book_id: uuid.UUID,
    segment_id: uuid.UUID | None,
    user_ids: list[uuid.UUID] | None,
) -> tuple[str, uuid.UUID | list[uuid.UUID], int | None]:
    """The checks both distribute and its preview make, and who the audience is: the users
    query, its parameter and how many users were listed (None for a segment)."""
    active = await conn.fetchval(f"SELECT {BOOK_ACTIVE} FROM books b WHERE b.id = $1", book_id)
    if active is None:
        raise NotFound(f"No book {book_id}.")
    if not active:
        raise BookInactive("The book is paused, archived or outside its validity window.")
    if segment_id is not None:
        if not await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM segments WHERE id = $1)", segment_id
        ):
            raise NotFound(f"No segment {segment_id}.")
        return _SEGMENT_USERS, segment_id, None
    unique = sorted(set(user_ids or []))
    return _LISTED_USERS, unique, len(unique)


async def distribute(
    session: AsyncSession,
    book_id: uuid.UUID,
    actor_id: uuid.UUID,
    *,
    segment_id: uuid.UUID | None = None,
    user_ids: list[uuid.UUID] | None = None,
) -> DistributeOut:
    """One code per user, users in ascending id until codes run out, limits respected."""
    conn = await raw_connection(session)
    users, param, requested = await _audience(conn, book_id, segment_id, user_ids)
    await conn.execute(_LOCK_BOOK, book_id)
    row = await conn.fetchrow(_DISTRIBUTE.format(users=users), book_id, param, actor_id)
    assert row is not None
    candidates, eligible, assigned = row["candidates"], row["eligible"], row["assigned"]
    return DistributeOut(
        assigned=assigned,
        skipped=Skipped(
            limit_reached=candidates - eligible,
            exhausted=eligible - assigned,
            unknown_users=(requested - candidates) if requested is not None else 0,
        ),
    )


async def preview_distribute(
    session: AsyncSession,
    book_id: uuid.UUID,
    *,
    segment_id: uuid.UUID | None = None,
    user_ids: list[uuid.UUID] | None = None,
) -> DistributePreviewOut:
    """What `distribute` would do now, changing nothing: the audience, how many would get a
    code, how many are at their limit, how many would miss out because codes run out."""
    conn = await raw_connection(session)
    users, param, requested = await _audience(conn, book_id, segment_id, user_ids)
    row = await conn.fetchrow(_PREVIEW.format(users=users), book_id, param)
    assert row is not None
    candidates, eligible = row["candidates"], row["eligible"]
    would_assign = min(eligible, row["free"])
    return DistributePreviewOut(
        audience=candidates,
        would_assign=would_assign,
        already_holding=row["holding"],
        free_codes=row["free"],
        skipped=Skipped(
            limit_reached=candidates - eligible,
            exhausted=eligible - would_assign,
            unknown_users=(requested - candidates) if requested is not None else 0,
        ),
    )
