"""book_assign_random_batch: coalesced random assigns of one book in one call

Concurrent `POST /books/{id}/assign` requests of one book join a batch (app/core/coalesce.py)
that runs as one call of this function, in one transaction: the book's shared lock, the
callers' locks in uuid order, one set-based claim for every request the book and its limit
allow, then each request it did not serve alone, in arrival order, with the statement and
pauses of `book_assign_random` (0012). One row per request, numbered by `ord`. The body is
the service's statements verbatim (`app.books.assign.ASSIGN_BATCH_FUNCTION`);
tests/test_hot_functions.py checks that the schema's body is still that text.

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-05
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0021"
down_revision: str | Sequence[str] | None = "0020"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BOOK_ASSIGN_RANDOM_BATCH = r"""
CREATE OR REPLACE FUNCTION book_assign_random_batch(p_book uuid, p_users uuid[],
                                                    p_actors uuid[], p_details jsonb)
RETURNS TABLE (ord integer, code_id bigint, code text, book_id uuid, status text, user_id uuid,
               assigned_at timestamptz, locked_until timestamptz, redemptions integer,
               redemptions_left integer, book_active boolean, user_exists boolean,
               allowed boolean, free_left boolean)
LANGUAGE plpgsql AS $assign$
#variable_conflict use_column
DECLARE
    c record;
    i integer;
    p_user uuid;
    p_actor uuid;
    p_start float8;
    pause float8;
    served integer[] := '{}';
BEGIN
    PERFORM pg_advisory_xact_lock_shared(hashtextextended(p_book::uuid::text, 2));
    FOR p_user IN SELECT DISTINCT u FROM unnest(p_users) AS u ORDER BY u LOOP
        PERFORM pg_advisory_xact_lock(hashtextextended(p_book::uuid::text || ':' || p_user::uuid::text, 1));
    END LOOP;
    p_start := random();
    FOR c IN WITH book AS (
    SELECT b.id, b.max_codes_per_user, b.max_redemptions_per_code, (b.status = 'active' AND (b.starts_at IS NULL OR b.starts_at <= now()) AND (b.expires_at IS NULL OR b.expires_at > now())) AS active
    FROM books b WHERE b.id = p_book
),
req AS (
    SELECT r.ord::integer AS ord, r.user_id, r.actor_id,
           row_number() OVER (PARTITION BY r.user_id ORDER BY r.ord) AS nth
    FROM unnest(p_users::uuid[], p_actors::uuid[]) WITH ORDINALITY AS r(user_id, actor_id, ord)
),
held AS (
    SELECT c.user_id, count(*) AS n FROM codes c
    WHERE c.book_id = p_book AND c.user_id IN (SELECT user_id FROM req)
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
    WHERE c.book_id = p_book AND c.status = 'unassigned' AND c.rand_key >= p_start
    ORDER BY c.rand_key LIMIT (SELECT count(*) FROM allowed) FOR UPDATE OF c SKIP LOCKED
),
lo AS MATERIALIZED (
    SELECT c.id, c.rand_key FROM codes c
    WHERE c.book_id = p_book AND c.status = 'unassigned' AND c.rand_key < p_start
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
    WHERE c.book_id = p_book AND c.id = pairs.id AND b.id = c.book_id
    RETURNING pairs.ord, pairs.actor_id, c.id AS code_id,
    c.code, c.book_id, (CASE WHEN (c.status = 'locked' AND c.locked_until <= now()) THEN 'assigned' ELSE c.status END) AS status,
    c.user_id, c.assigned_at, (CASE WHEN (c.status = 'locked' AND c.locked_until > now()) THEN c.locked_until END) AS locked_until,
    c.redemptions,
    greatest(b.max_redemptions_per_code - c.redemptions, 0) AS redemptions_left

),
logged AS (
    INSERT INTO redemption_history (code_id, book_id, user_id, action, actor_id, details)
    SELECT code_id, book_id, user_id, 'assigned', actor_id, p_details::jsonb FROM claimed
)
SELECT ord, code_id, code, book_id, status, user_id, assigned_at, locked_until, redemptions,
       redemptions_left
FROM claimed
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
        FOREACH pause IN ARRAY ARRAY[0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.032, 0.032, 0.032, 0.032, 0.032, 0.032, 0.032, 0.032, 0.032, 0.032, 0.032, 0.032, 0.032, 0.032, 0.032, 0.032, 0.032, 0.032, 0.032, 0.032, 0.032, 0.032, 0.032, 0.032, 0.032, 0.032, 0.032, 0.032, 0.032, 0.032, 0.032, 0.032, 0.032, 0.032, NULL] LOOP
            p_start := random();
            WITH
    book AS (
        SELECT b.id, b.max_codes_per_user, b.max_redemptions_per_code, (b.status = 'active' AND (b.starts_at IS NULL OR b.starts_at <= now()) AND (b.expires_at IS NULL OR b.expires_at > now())) AS active
        FROM books b WHERE b.id = p_book
    ),
    target AS (SELECT u.id FROM users u WHERE u.id = p_user),
    held AS (SELECT count(*) AS n FROM codes WHERE user_id = p_user AND book_id = p_book),
    allowed AS (
        SELECT 1 FROM book, held, target
        WHERE book.active
          AND (book.max_codes_per_user IS NULL OR held.n < book.max_codes_per_user)
    ),
    hi AS MATERIALIZED (
        SELECT c.id FROM codes c
        WHERE c.book_id = p_book AND c.status = 'unassigned' AND c.rand_key >= p_start
          AND EXISTS (SELECT 1 FROM allowed)
        ORDER BY c.rand_key LIMIT 1 FOR UPDATE OF c SKIP LOCKED
    ),
    lo AS MATERIALIZED (
        SELECT c.id FROM codes c
        WHERE c.book_id = p_book AND c.status = 'unassigned' AND c.rand_key < p_start
          AND EXISTS (SELECT 1 FROM allowed) AND NOT EXISTS (SELECT 1 FROM hi)
        ORDER BY c.rand_key LIMIT 1 FOR UPDATE OF c SKIP LOCKED
    ),
    picked AS (SELECT id FROM hi UNION ALL SELECT id FROM lo),

    claimed AS (
        UPDATE codes c
        SET status = 'assigned', user_id = p_user, assigned_at = now(), updated_at = now()
        FROM book b
        WHERE c.book_id = p_book AND c.id IN (SELECT id FROM picked) AND b.id = c.book_id
        RETURNING c.id AS code_id,
        c.code, c.book_id, (CASE WHEN (c.status = 'locked' AND c.locked_until <= now()) THEN 'assigned' ELSE c.status END) AS status,
        c.user_id, c.assigned_at, (CASE WHEN (c.status = 'locked' AND c.locked_until > now()) THEN c.locked_until END) AS locked_until,
        c.redemptions,
        greatest(b.max_redemptions_per_code - c.redemptions, 0) AS redemptions_left

    ),
    logged AS (
        INSERT INTO redemption_history (code_id, book_id, user_id, action, actor_id, details)
        SELECT code_id, book_id, user_id, 'assigned', p_actor, p_details::jsonb FROM claimed
    )
    SELECT claimed.*,
           (SELECT active FROM book) AS book_active,
           EXISTS (SELECT 1 FROM target) AS user_exists,
           EXISTS (SELECT 1 FROM allowed) AS allowed,
           CASE WHEN NOT EXISTS (SELECT 1 FROM claimed) THEN EXISTS (
               SELECT 1 FROM codes f WHERE f.book_id = p_book AND f.status = 'unassigned')
           END AS free_left
    FROM (SELECT 1) AS one LEFT JOIN claimed ON true
            INTO c;
            EXIT WHEN pause IS NULL OR c.code IS NOT NULL OR NOT c.allowed OR NOT c.free_left;
            PERFORM pg_sleep(pause * (0.5 + random()));
        END LOOP;
        RETURN QUERY SELECT i, c.code_id, c.code, c.book_id, c.status, c.user_id, c.assigned_at,
        c.locked_until, c.redemptions, c.redemptions_left, c.book_active, c.user_exists,
        c.allowed, c.free_left;
    END LOOP;
END
$assign$
"""


def upgrade() -> None:
    op.execute(BOOK_ASSIGN_RANDOM_BATCH)


def downgrade() -> None:
    op.execute("DROP FUNCTION book_assign_random_batch(uuid, uuid[], uuid[], jsonb)")
