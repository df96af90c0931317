"""promo_reserve, promo_reserve_batch: plans that seek however small the tables were

Both functions again, planning their statements with `enable_seqscan = off` (a setting of
the function: it holds only inside the call), and with the claim's retirement of a
taken-over hold finding it by a scalar key rather than a join. plpgsql caches a generic plan
of each statement from its sixth run on a connection and keeps it until an ANALYZE of a
table it reads; made while `reservations` was near empty, it read the whole table twice a
reserve, so every reserve got slower as holds piled up until autovacuum next analyzed the
table. The bodies are the service's statements verbatim
(`app.promos.reservations.RESERVE_FUNCTION` and `RESERVE_BATCH_FUNCTION`);
tests/test_hot_functions.py checks that the schema still holds that text and those
settings. Downgrade puts back the functions of 0023.

Revision ID: 0024
Revises: 0023
Create Date: 2026-12-06
"""

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

from alembic import op

revision: str = "0024"
down_revision: str | Sequence[str] | None = "0023"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PROMO_RESERVE = r"""CREATE OR REPLACE FUNCTION promo_reserve(p_promo uuid, p_user uuid, p_ttl integer)
RETURNS TABLE (open boolean, eligible boolean, used bigint, max_per_user integer,
               live_id uuid, live_expires_at timestamptz, hold_id uuid,
               hold_expires_at timestamptz, sold_out boolean)
LANGUAGE plpgsql
SET enable_seqscan = off AS $reserve$
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
mine AS MATERIALIZED (SELECT r.id, r.unit_id, r.status, r.expires_at FROM reservations r
    WHERE r.promo_id = p_promo AND r.user_id = p_user),
verdict AS (
    SELECT p.max_per_user, (p.active AND p.cancelled_at IS NULL AND p.starts_at <= now() AND now() < p.ends_at) AS open,
           EXISTS (SELECT 1 FROM me WHERE (earth_distance(ll_to_earth(s.lat, s.lng), me.e) <= p.radius_m AND (NOT EXISTS (SELECT 1 FROM promo_segments ps WHERE ps.promo_id = p.id)
    OR EXISTS (
        SELECT 1 FROM promo_segments ps JOIN segments g ON g.id = ps.segment_id
        WHERE ps.promo_id = p.id
          AND segment_contains(g.kind, g.rules, g.id, me.id, me.tags, me.birth_date))))) AS eligible,
           (SELECT count(*) FROM mine r
             WHERE r.status = 'purchased' OR (r.status = 'held' AND r.expires_at > now())) AS used
    FROM promos p
    JOIN products pr ON pr.id = p.product_id
    JOIN stores s ON s.id = pr.store_id
    WHERE p.id = p_promo
),
live AS (
    SELECT r.id, r.expires_at FROM mine r WHERE (r.status = 'held' AND r.expires_at > now())
),
may_reserve AS (
    SELECT 1 FROM verdict v
    WHERE v.open AND v.eligible AND v.used < v.max_per_user
      AND NOT EXISTS (SELECT 1 FROM live)
),
may_claim AS (
    SELECT 1 FROM may_reserve
    WHERE NOT EXISTS (SELECT 1 FROM mine r WHERE (r.status = 'held' AND r.expires_at <= now()))
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
    WHERE r.id = (SELECT old FROM lapsed_unit) AND (r.status NOT IN ('purchased', 'cancelled', 'expired') AND r.expires_at <= now())
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
            WITH mine AS MATERIALIZED (SELECT r.id, r.unit_id, r.status, r.expires_at FROM reservations r
    WHERE r.promo_id = p_promo AND r.user_id = p_user),
freed AS (
    UPDATE promo_units u SET state = 'free', reservation_id = NULL
    FROM mine r
    WHERE (r.status = 'held' AND r.expires_at <= now()) AND u.id = r.unit_id AND u.reservation_id = r.id AND u.state <> 'sold'
    RETURNING r.id AS old
)
UPDATE reservations r SET status = 'expired', updated_at = now()
WHERE r.id = ANY (ARRAY(SELECT old FROM freed)) AND (r.status NOT IN ('purchased', 'cancelled', 'expired') AND r.expires_at <= now());
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

PROMO_RESERVE_BATCH = r"""CREATE OR REPLACE FUNCTION promo_reserve_batch(p_promo uuid, p_users uuid[], p_ttl integer)
RETURNS TABLE (ord integer, open boolean, eligible boolean, used bigint,
               max_per_user integer, live_id uuid, live_expires_at timestamptz, hold_id uuid,
               hold_expires_at timestamptz, sold_out boolean)
LANGUAGE plpgsql
SET enable_seqscan = off AS $reserve$
#variable_conflict use_column
DECLARE
    c record;
    i integer;
    p_user uuid;
    pause float8;
    released boolean;
    served integer[] := '{}';
BEGIN
    FOR p_user IN SELECT DISTINCT u FROM unnest(p_users) AS u ORDER BY u LOOP
        PERFORM pg_advisory_xact_lock(hashtextextended(p_promo::text || ':' || p_user::text, 3));
    END LOOP;
    FOR c IN WITH req AS (
    SELECT r.ord::integer AS ord, r.user_id,
           row_number() OVER (PARTITION BY r.user_id ORDER BY r.ord) AS nth
    FROM unnest(p_users::uuid[]) WITH ORDINALITY AS r(user_id, ord)
),
cand AS MATERIALIZED (
    SELECT q.ord, q.user_id, p.max_per_user, used.n AS used,
           row_number() OVER (ORDER BY q.ord) AS slot
    FROM req q
    JOIN LATERAL (SELECT u.id, u.tags, u.birth_date, ll_to_earth(u.lat, u.lng) AS e FROM users u WHERE u.id = q.user_id AND u.lat IS NOT NULL AND u.lng IS NOT NULL) me ON true
    CROSS JOIN promos p
    JOIN products pr ON pr.id = p.product_id
    JOIN stores s ON s.id = pr.store_id
    CROSS JOIN LATERAL (
        SELECT count(*) FILTER (WHERE r.status = 'purchased' OR (r.status = 'held' AND r.expires_at > now())) AS n,
               count(*) FILTER (WHERE r.status = 'held') AS holds
        FROM reservations r
        WHERE r.promo_id = p.id AND r.user_id = q.user_id) used
    WHERE p.id = p_promo AND q.nth = 1 AND (p.active AND p.cancelled_at IS NULL AND p.starts_at <= now() AND now() < p.ends_at) AND (earth_distance(ll_to_earth(s.lat, s.lng), me.e) <= p.radius_m AND (NOT EXISTS (SELECT 1 FROM promo_segments ps WHERE ps.promo_id = p.id)
    OR EXISTS (
        SELECT 1 FROM promo_segments ps JOIN segments g ON g.id = ps.segment_id
        WHERE ps.promo_id = p.id
          AND segment_contains(g.kind, g.rules, g.id, me.id, me.tags, me.birth_date))))
      AND used.n < p.max_per_user AND used.holds = 0
),
free AS MATERIALIZED (
    SELECT f.id, row_number() OVER (ORDER BY f.seq) AS slot
    FROM (SELECT u.id, u.seq FROM promo_units u
          WHERE u.promo_id = p_promo AND u.state = 'free'
          ORDER BY u.seq LIMIT (SELECT count(*) FROM cand)
          FOR UPDATE SKIP LOCKED) f
),
pairs AS (
    SELECT c.ord, c.user_id, c.used, c.max_per_user, f.id AS unit_id
    FROM cand c JOIN free f USING (slot)
),
hold AS (
    INSERT INTO reservations (promo_id, user_id, unit_id, expires_at)
    SELECT p_promo, pairs.user_id, pairs.unit_id, now() + p_ttl::int * interval '1 second' FROM pairs
    RETURNING id, unit_id, expires_at
),
held AS (
    UPDATE promo_units u SET state = 'held', reservation_id = hold.id
    FROM hold WHERE u.id = hold.unit_id
    RETURNING u.id
)
SELECT pairs.ord, pairs.used, pairs.max_per_user, hold.id AS hold_id,
       hold.expires_at AS hold_expires_at
FROM pairs JOIN hold ON hold.unit_id = pairs.unit_id JOIN held ON held.id = hold.unit_id
    LOOP
        served := served || c.ord;
        RETURN QUERY SELECT c.ord, true, true, c.used, c.max_per_user, NULL::uuid,
            NULL::timestamptz, c.hold_id, c.hold_expires_at, NULL::boolean;
    END LOOP;
    FOR i IN 1 .. cardinality(p_users) LOOP
        CONTINUE WHEN i = ANY (served);
        p_user := p_users[i];
        FOREACH pause IN ARRAY ARRAY[0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.032, 0.032, 0.032, 0.032, 0.032, 0.032, 0.032, 0.032, 0.032, 0.032, 0.032, 0.032, 0.032, 0.032, 0.032, 0.032, 0.032, 0.032, 0.032, 0.032, 0.032, 0.032, 0.032, 0.032, 0.032, 0.032, 0.032, 0.032, 0.032, 0.032, 0.032, 0.032, 0.032, 0.032, NULL] LOOP
            released := false;
            LOOP
                WITH me AS (SELECT u.id, u.tags, u.birth_date, ll_to_earth(u.lat, u.lng) AS e FROM users u WHERE u.id = p_user AND u.lat IS NOT NULL AND u.lng IS NOT NULL),
    mine AS MATERIALIZED (SELECT r.id, r.unit_id, r.status, r.expires_at FROM reservations r
        WHERE r.promo_id = p_promo AND r.user_id = p_user),
    verdict AS (
        SELECT p.max_per_user, (p.active AND p.cancelled_at IS NULL AND p.starts_at <= now() AND now() < p.ends_at) AS open,
               EXISTS (SELECT 1 FROM me WHERE (earth_distance(ll_to_earth(s.lat, s.lng), me.e) <= p.radius_m AND (NOT EXISTS (SELECT 1 FROM promo_segments ps WHERE ps.promo_id = p.id)
        OR EXISTS (
            SELECT 1 FROM promo_segments ps JOIN segments g ON g.id = ps.segment_id
            WHERE ps.promo_id = p.id
              AND segment_contains(g.kind, g.rules, g.id, me.id, me.tags, me.birth_date))))) AS eligible,
               (SELECT count(*) FROM mine r
                 WHERE r.status = 'purchased' OR (r.status = 'held' AND r.expires_at > now())) AS used
        FROM promos p
        JOIN products pr ON pr.id = p.product_id
        JOIN stores s ON s.id = pr.store_id
        WHERE p.id = p_promo
    ),
    live AS (
        SELECT r.id, r.expires_at FROM mine r WHERE (r.status = 'held' AND r.expires_at > now())
    ),
    may_reserve AS (
        SELECT 1 FROM verdict v
        WHERE v.open AND v.eligible AND v.used < v.max_per_user
          AND NOT EXISTS (SELECT 1 FROM live)
    ),
    may_claim AS (
        SELECT 1 FROM may_reserve
        WHERE NOT EXISTS (SELECT 1 FROM mine r WHERE (r.status = 'held' AND r.expires_at <= now()))
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
        WHERE r.id = (SELECT old FROM lapsed_unit) AND (r.status NOT IN ('purchased', 'cancelled', 'expired') AND r.expires_at <= now())
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
                WITH mine AS MATERIALIZED (SELECT r.id, r.unit_id, r.status, r.expires_at FROM reservations r
        WHERE r.promo_id = p_promo AND r.user_id = p_user),
    freed AS (
        UPDATE promo_units u SET state = 'free', reservation_id = NULL
        FROM mine r
        WHERE (r.status = 'held' AND r.expires_at <= now()) AND u.id = r.unit_id AND u.reservation_id = r.id AND u.state <> 'sold'
        RETURNING r.id AS old
    )
    UPDATE reservations r SET status = 'expired', updated_at = now()
    WHERE r.id = ANY (ARRAY(SELECT old FROM freed)) AND (r.status NOT IN ('purchased', 'cancelled', 'expired') AND r.expires_at <= now());
                released := true;
            END LOOP;
            EXIT WHEN pause IS NULL OR c.hold_id IS NOT NULL OR c.claimable_left IS NOT TRUE;
            PERFORM pg_sleep(pause * (0.5 + random()));
        END LOOP;
        RETURN QUERY SELECT i, c.open, c.eligible, c.used, c.max_per_user, c.live_id,
            c.live_expires_at, c.hold_id, c.hold_expires_at, c.sold_out;
    END LOOP;
END
$reserve$
"""


def _earlier(name: str) -> ModuleType:
    """An earlier migration of this directory, by file name, for its function text."""
    path = Path(__file__).with_name(name)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def upgrade() -> None:
    op.execute(PROMO_RESERVE)
    op.execute(PROMO_RESERVE_BATCH)


def downgrade() -> None:
    # CREATE OR REPLACE without a SET clause also drops the function's settings.
    earlier = _earlier("2026_12_06_0023_reserve_reads_by_key.py")
    op.execute(earlier.PROMO_RESERVE)
    op.execute(earlier.PROMO_RESERVE_BATCH)
