"""promo_reserve: a reserve in one round trip

A reserve was four round trips: BEGIN, the per-user advisory lock, the claim, COMMIT. The
lock must be its own statement (under READ COMMITTED a statement's snapshot is taken before
its lock is granted), so it could not join the claim. Inside one plpgsql function each
statement gets a fresh snapshot: the function takes the lock, then runs the claim (after
releasing the caller's own lapsed hold), retrying a claim that met only units other reserves
were taking, and the call runs in its own statement's transaction when the request sent no
Idempotency-Key. The body is the service's statements verbatim
(`app.promos.reservations.RESERVE_FUNCTION`); tests/test_hot_functions.py checks
that the schema's body is still that text.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-05
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0011"
down_revision: str | Sequence[str] | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PROMO_RESERVE = r"""
CREATE OR REPLACE FUNCTION promo_reserve(p_promo uuid, p_user uuid, p_ttl integer)
RETURNS TABLE (open boolean, eligible boolean, used bigint, max_per_user integer,
               live_id uuid, live_expires_at timestamptz, hold_id uuid,
               hold_expires_at timestamptz, sold_out boolean)
LANGUAGE plpgsql AS $reserve$
#variable_conflict use_column
DECLARE
    c record;
    pause float8;
    released boolean;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended(p_promo::text || ':' || p_user::text, 3));
    FOREACH pause IN ARRAY ARRAY[0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.032, 0.032, 0.032, 0.032, 0.032, 0.032, 0.032, 0.032, 0.032, 0.032, 0.032, 0.032, 0.032, 0.032, 0.032, 0.032, 0.032, 0.032, 0.032, 0.032, 0.032, 0.032, 0.032, 0.032, 0.032, 0.032, 0.032, 0.032, 0.032, 0.032, 0.032, 0.032, 0.032, 0.032, NULL] LOOP
        released := false;
        LOOP
            WITH me AS (SELECT u.id, u.tags, u.birth_date, ll_to_earth(u.lat, u.lng) AS e FROM users u WHERE u.id = p_user AND u.lat IS NOT NULL AND u.lng IS NOT NULL),
verdict AS (
    SELECT p.max_per_user, (p.active AND p.cancelled_at IS NULL AND p.starts_at <= now() AND now() < p.ends_at) AS open,
           EXISTS (SELECT 1 FROM me WHERE (earth_distance(ll_to_earth(s.lat, s.lng), me.e) <= p.radius_m AND (NOT EXISTS (SELECT 1 FROM promo_segments ps WHERE ps.promo_id = p.id)
    OR EXISTS (
        SELECT 1 FROM promo_segments ps JOIN segments g ON g.id = ps.segment_id
        WHERE ps.promo_id = p.id
          AND segment_contains(g.kind, g.rules, g.id, me.id, me.tags, me.birth_date))))) AS eligible,
           (SELECT count(*) FROM reservations r
             WHERE r.promo_id = p.id AND r.user_id = p_user
               AND (r.status = 'purchased' OR (r.status = 'held' AND r.expires_at > now()))) AS used
    FROM promos p
    JOIN products pr ON pr.id = p.product_id
    JOIN stores s ON s.id = pr.store_id
    WHERE p.id = p_promo
),
live AS (
    SELECT r.id, r.expires_at FROM reservations r
    WHERE r.promo_id = p_promo AND r.user_id = p_user AND (r.status = 'held' AND r.expires_at > now())
),
may_reserve AS (
    SELECT 1 FROM verdict v
    WHERE v.open AND v.eligible AND v.used < v.max_per_user
      AND NOT EXISTS (SELECT 1 FROM live)
),
may_claim AS (
    SELECT 1 FROM may_reserve
    WHERE NOT EXISTS (SELECT 1 FROM reservations r
                      WHERE r.promo_id = p_promo AND r.user_id = p_user AND (r.status = 'held' AND r.expires_at <= now()))
),
free_unit AS MATERIALIZED (
    SELECT u.id, NULL::uuid AS old FROM promo_units u
    WHERE u.promo_id = p_promo AND u.state = 'free' AND EXISTS (SELECT 1 FROM may_claim)
    ORDER BY u.seq
    LIMIT 1
    FOR UPDATE SKIP LOCKED
),
lapsed_unit AS MATERIALIZED (
    SELECT u.id, c.id AS old
    FROM (SELECT r.id, r.unit_id, r.expires_at FROM reservations r
          WHERE r.promo_id = p_promo AND (r.status = 'held' AND r.expires_at <= now())
            AND EXISTS (SELECT 1 FROM may_claim) AND NOT EXISTS (SELECT 1 FROM free_unit)
          ORDER BY r.expires_at
          LIMIT 32) c
    JOIN promo_units u ON u.id = c.unit_id AND u.reservation_id = c.id AND u.state = 'held'
    ORDER BY c.expires_at
    LIMIT 1
    FOR UPDATE OF u SKIP LOCKED
),
unit AS (SELECT id, old FROM free_unit UNION ALL SELECT id, old FROM lapsed_unit),
retired AS (
    UPDATE reservations r SET status = 'expired', updated_at = now()
    FROM unit WHERE r.id = unit.old AND (r.status = 'held' AND r.expires_at <= now())
),
hold AS (
    INSERT INTO reservations (promo_id, user_id, unit_id, expires_at)
    SELECT p_promo, p_user, unit.id, now() + p_ttl::int * interval '1 second' FROM unit
    RETURNING id, unit_id, expires_at
),
held AS (
    UPDATE promo_units u SET state = 'held', reservation_id = hold.id
    FROM hold WHERE u.id = hold.unit_id
    RETURNING u.id
)
SELECT v.open, v.eligible, v.used, v.max_per_user,
       l.id AS live_id, l.expires_at AS live_expires_at,
       h.id AS hold_id, h.expires_at AS hold_expires_at,
       EXISTS (SELECT 1 FROM may_reserve) AND NOT EXISTS (SELECT 1 FROM may_claim)
           AS release_first,
       CASE WHEN h.id IS NULL THEN (SELECT ((SELECT coalesce(sum(sa.sold), 0) FROM promo_sales sa WHERE sa.promo_id = p.id) >= p.quantity) FROM promos p WHERE p.id = p_promo)
       END AS sold_out,
       CASE WHEN h.id IS NULL AND EXISTS (SELECT 1 FROM may_claim) THEN (
           (SELECT u.seq FROM promo_units u WHERE u.promo_id = p_promo AND u.state = 'free'
             ORDER BY u.seq LIMIT 1) IS NOT NULL
           OR (SELECT r.expires_at FROM reservations r WHERE r.promo_id = p_promo AND r.status = 'held'
                ORDER BY r.expires_at LIMIT 1) <= now())
       END AS claimable_left
FROM verdict v
LEFT JOIN live l ON true
LEFT JOIN (SELECT hold.id, hold.expires_at FROM hold JOIN held ON held.id = hold.unit_id) h
    ON true
            INTO c;
            IF NOT FOUND THEN
                RETURN;
            END IF;
            EXIT WHEN NOT c.release_first;
            -- Whoever else took the unit meanwhile retired the hold with it.
            IF released THEN
                RAISE EXCEPTION 'a lapsed hold outlived release';
            END IF;
            WITH freed AS (
    UPDATE promo_units u SET state = 'free', reservation_id = NULL
    FROM reservations r
    WHERE r.promo_id = p_promo AND r.user_id = p_user AND (r.status = 'held' AND r.expires_at <= now())
      AND u.id = r.unit_id AND u.reservation_id = r.id AND u.state = 'held'
    RETURNING r.id AS old
)
UPDATE reservations r SET status = 'expired', updated_at = now()
WHERE r.id = ANY (ARRAY(SELECT old FROM freed)) AND (r.status = 'held' AND r.expires_at <= now());
            released := true;
        END LOOP;
        EXIT WHEN pause IS NULL OR c.hold_id IS NOT NULL OR c.claimable_left IS NOT TRUE;
        PERFORM pg_sleep(pause * (0.5 + random()));
    END LOOP;
    RETURN QUERY SELECT c.open, c.eligible, c.used, c.max_per_user, c.live_id,
        c.live_expires_at, c.hold_id, c.hold_expires_at, c.sold_out;
END
$reserve$
"""


def upgrade() -> None:
    op.execute(PROMO_RESERVE)


def downgrade() -> None:
    op.execute("DROP FUNCTION promo_reserve(uuid, uuid, integer)")
