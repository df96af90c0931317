"""Reserve, purchase and cancel: the hot paths, as hand-written SQL on the request's asyncpg
connection (the route's `Tx`; the caller's listing borrows its session's connection). The
caller owns the transaction; nothing here commits.

Invariants, held by the statements below and backed by constraints:
- a unit is `free`, `held` by exactly one reservation, or `sold`; a `held` unit whose
  reservation is past `expires_at` (database clock, `rules.HOLD_LAPSED`) is claimable, so
  expiry needs no sweeper; the worker's bounded sweep (`retire_lapsed_holds`) only closes
  lapsed holds that no reserve took over, such as those of promos that ended;
- a user has at most one `held` reservation per promo (partial unique index) and at most
  `max_per_user` purchases plus live holds (advisory lock per promo and user);
- a unit is sold once (one purchased reservation per unit; units never outnumber the
  quantity), and each sale adds one to its unit's slot in `promo_sales`, never to the promo
  row, so purchases of one promo do not queue behind each other;
- each purchase appends one row to the purchase log (`purchase_log.py`, unique by
  reservation), in the purchase's own statement.
Lock order on these paths is always unit, then promo, then sales slot, then reservation, so
they never deadlock with each other (a promo PATCH locks the promo row before its units:
docs/decisions.md).
"""

from __future__ import annotations

import textwrap
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg
from asyncpg.pool import PoolConnectionProxy
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.db import raw_connection
from app.core.locking import LockNamespace, xact_lock_sql
from app.core.plpgsql import RETRY_PAUSES, named, uuid_array
from app.core.problems import NotFound
from app.promos import rules
from app.promos.errors import (
    NotEligible,
    PromoNotRunning,
    PurchaseLimitReached,
    ReservationExpired,
    SoldOut,
)
from app.promos.schemas import MyReservationOut, ReservationOut

# --- reserve: two statements in the request's transaction ---------------------------------
# 1. `_LOCK` serialises the caller's reserves of one promo (the per-user limit is counted,
#    then acted on).
# 2. `_CLAIM` judges the promo and the caller and, if they may reserve, claims one unit,
#    retires the lapsed hold it takes the unit from and inserts the new hold.
# A caller whose own hold on the promo has lapsed first runs `_RELEASE` (give its unit
# back, retire it), then `_CLAIM` again; `_CLAIM` claims nothing while such a hold exists.
# Two reasons. The partial unique index admits one `held` row per user and promo, so the
# old hold must be retired before the new one is inserted, and PostgreSQL promises no order
# among the sub-statements of one WITH unless one reads another's rows. And giving the old
# unit back may wait for a concurrent reserve that is taking it over: waiting while holding
# a claimed unit lets two callers each hold the unit the other waits for (a deadlock), so
# it waits before claiming anything. A reserve never waits for a unit while holding one.

# Its own statement: under READ COMMITTED the next statement's snapshot is taken after the
# lock is granted, so it sees the previous holder's commit. In one statement it would not.
_LOCK_KEY = "$1::uuid::text || ':' || $2::uuid::text"
_LOCK = f"SELECT {xact_lock_sql(LockNamespace.PROMO_USER, _LOCK_KEY)}"

# $1 promo, $2 user, $3 TTL in seconds. Each step reads the ones above it; every one seeks
# by index, so the work is the caller's own rows on this promo and the one unit claimed,
# however many holds other promos (or lapsed holds of this one) have:
# - `mine`: the caller's reservations of the promo (`_MINE`), which the next three read.
# - `verdict`: is the promo open, is the caller eligible, how many units have they used
#   (purchases and live holds)? No row: no such promo.
# - `live`: the caller's live hold, answered again instead of a second one.
# - `may_reserve`: a row when the caller may take a unit now; `may_claim` when, besides,
#   they have no lapsed hold to release first. Under the lock no other reserve of the
#   caller runs, and everything else only moves holds out of `held`, so the insert below
#   meets no `held` row of the caller.
# - `free_unit`, else `lapsed_unit` (the hold of this promo that lapsed first): one unit,
#   SKIP LOCKED so concurrent reserves take different rows and never wait. MATERIALIZED
#   keeps each claim to exactly one row (an inlined sub-select may be re-run by the
#   planner). `old` is the lapsed hold the unit is taken from. The lapsed holds come in
#   expiry order from `ix_reservations_promo_id_expires_at_held`, at most
#   `_LAPSED_CANDIDATES` of them: the planner cannot estimate the join to the units (it
#   takes `u.id = c.unit_id` and `u.reservation_id = c.id` as independent, so expects one
#   row), and unbounded it may hash every held unit and sort them. More candidates than
#   reserves that claim at once: a miss means they were all being taken, and the retry
#   in `_claim` sees them gone.
# - `retired`: the hold the unit is taken from becomes `expired`, by primary key, after
#   the unit is locked (units before reservations, as in purchase and cancel). The answer
#   does not read it: PostgreSQL runs every data-modifying sub-statement to the end. By
#   key only: a scalar sub-select, not a join with `unit` (which may be planned as a hash
#   of the whole table), and "held" in words no partial index of holds matches (else the
#   planner may walk such an index, filtering on the key), as in `_RELEASE`.
# - `hold` and `held`: insert the hold and point the claimed unit (locked above) at it.
# The answer: the verdict, the live hold, the new hold (`hold_id`), whether a lapsed hold
# of the caller's must be released first; when nothing was claimed, whether the promo is
# sold out, and whether claimable units are left (then every one met was locked by a
# concurrent reserve, and `_claim` runs the statement again). Those two read the first
# entry of the index whose order they name; an EXISTS may be planned as a sequential scan,
# which reads the whole table when nothing matches. A `held` reservation always has its
# unit pointing at it, so the earliest expiry among the promo's holds says whether a lapsed
# unit is left.
_LAPSED_CANDIDATES = 32
# The caller's reservations of the promo, by `ix_reservations_promo_id_user_id` and nothing
# else: no condition on status or expiry, which the indexes of holds (by expiry, by
# creation) also match. Statistics lag a flash sale (a promo's holds pile up within a
# minute, long before autovacuum analyzes them), and a planner that believes the promo has
# no holds may seek the promo's holds by expiry and filter them on the user: every hold of
# the promo read, for one caller. MATERIALIZED: read once, the steps below filter it.
_MINE = """SELECT r.id, r.unit_id, r.status, r.expires_at FROM reservations r
    WHERE r.promo_id = $1 AND r.user_id = $2"""
_CLAIM = f"""
WITH me AS ({rules.me_sql("$2")}),
mine AS MATERIALIZED ({_MINE}),
verdict AS (
    SELECT p.max_per_user, {rules.OPEN} AS open,
           EXISTS (SELECT 1 FROM me WHERE {rules.ELIGIBLE}) AS eligible,
           (SELECT count(*) FROM mine r
             WHERE r.status = 'purchased' OR {rules.HOLD_LIVE}) AS used
    FROM promos p
    JOIN products pr ON pr.id = p.product_id
    JOIN stores s ON s.id = pr.store_id
    WHERE p.id = $1
),
live AS (
    SELECT r.id, r.expires_at FROM mine r WHERE {rules.HOLD_LIVE}
),
may_reserve AS (
    SELECT 1 FROM verdict v
    WHERE v.open AND v.eligible AND v.used < v.max_per_user
      AND NOT EXISTS (SELECT 1 FROM live)
),
may_claim AS (
    SELECT 1 FROM may_reserve
    WHERE NOT EXISTS (SELECT 1 FROM mine r WHERE {rules.HOLD_LAPSED})
),
free_unit AS MATERIALIZED (
    SELECT u.id, NULL::uuid AS old FROM promo_units u
    WHERE u.promo_id = $1 AND u.state = 'free' AND EXISTS (SELECT 1 FROM may_claim)
    ORDER BY u.seq
    LIMIT 1
    FOR UPDATE SKIP LOCKED
),
lapsed_unit AS MATERIALIZED (
    SELECT u.id, c.id AS old
    FROM (SELECT r.id, r.unit_id, r.expires_at FROM reservations r
          WHERE r.promo_id = $1 AND {rules.HOLD_LAPSED}
            AND EXISTS (SELECT 1 FROM may_claim) AND NOT EXISTS (SELECT 1 FROM free_unit)
          ORDER BY r.expires_at
          LIMIT {_LAPSED_CANDIDATES}) c
    JOIN promo_units u ON u.id = c.unit_id AND u.reservation_id = c.id AND u.state = 'held'
    ORDER BY c.expires_at
    LIMIT 1
    FOR UPDATE OF u SKIP LOCKED
),
unit AS (SELECT id, old FROM free_unit UNION ALL SELECT id, old FROM lapsed_unit),
retired AS (
    UPDATE reservations r SET status = 'expired', updated_at = now()
    WHERE r.id = (SELECT old FROM lapsed_unit) AND {rules.HOLD_LAPSED_BY_KEY}
),
hold AS (
    INSERT INTO reservations (promo_id, user_id, unit_id, expires_at)
    SELECT $1, $2, unit.id, now() + $3::int * interval '1 second' FROM unit
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
       CASE WHEN h.id IS NULL THEN (SELECT {rules.SOLD_OUT} FROM promos p WHERE p.id = $1)
       END AS sold_out,
       CASE WHEN h.id IS NULL AND EXISTS (SELECT 1 FROM may_claim) THEN (
           (SELECT u.seq FROM promo_units u WHERE u.promo_id = $1 AND u.state = 'free'
             ORDER BY u.seq LIMIT 1) IS NOT NULL
           OR (SELECT r.expires_at FROM reservations r WHERE r.promo_id = $1 AND r.status = 'held'
                ORDER BY r.expires_at LIMIT 1) <= now())
       END AS claimable_left
FROM verdict v
LEFT JOIN live l ON true
LEFT JOIN (SELECT hold.id, hold.expires_at FROM hold JOIN held ON held.id = hold.unit_id) h
    ON true
"""

# $1 promo, $2 user: the caller's lapsed hold gives its unit back and becomes `expired`.
# A plain UPDATE, not SKIP LOCKED: if a concurrent reserve, cancel or sweep is taking the
# unit, it waits for it (holding no unit itself), then frees the unit only if it still
# points at the caller's hold; whoever took it retired the hold. ARRAY(...) is computed
# before the scan, so the unit is locked before the reservation. Both updates find their
# row by primary key only: "held" is said in words no partial index of holds matches
# (`_UNIT_HELD`, `rules.HOLD_LAPSED_BY_KEY`), since a planner whose statistics predate the
# crowd takes such an index for empty and reads every entry of it.
_UNIT_HELD = "u.reservation_id = r.id AND u.state <> 'sold'"  # set and not sold: held
_RELEASE = f"""
WITH mine AS MATERIALIZED ({_MINE}),
freed AS (
    UPDATE promo_units u SET state = 'free', reservation_id = NULL
    FROM mine r
    WHERE {rules.HOLD_LAPSED} AND u.id = r.unit_id AND {_UNIT_HELD}
    RETURNING r.id AS old
)
UPDATE reservations r SET status = 'expired', updated_at = now()
WHERE r.id = ANY (ARRAY(SELECT old FROM freed)) AND {rules.HOLD_LAPSED_BY_KEY}
"""

# The worker's sweep, $1 holds at most: the oldest lapsed holds of every promo (by
# `ix_reservations_created_at_held`; a hold lapses a fixed TTL after it is created) give
# their units back and become `expired`. So the holds of promos that ended or were
# cancelled, which no reserve will take over, are closed once and leave the indexes of
# holds. Units first, SKIP LOCKED: a unit that a reserve, purchase or cancel is working on
# is left to it (a reserve retires the hold it takes over itself). A lapsed hold already
# reads as `expired` and its unit counts as free, so no answer changes.
_RETIRE_LAPSED = f"""
WITH due AS (
    SELECT r.id, r.unit_id FROM reservations r
    WHERE {rules.HOLD_LAPSED}
    ORDER BY r.created_at
    LIMIT $1
),
unit AS MATERIALIZED (
    SELECT u.id, due.id AS old FROM due
    JOIN promo_units u ON u.id = due.unit_id AND u.reservation_id = due.id AND u.state = 'held'
    FOR UPDATE OF u SKIP LOCKED
),
freed AS (
    UPDATE promo_units u SET state = 'free', reservation_id = NULL
    FROM unit WHERE u.id = unit.id
    RETURNING unit.old
)
UPDATE reservations r SET status = 'expired', updated_at = now()
WHERE r.id = ANY (ARRAY(SELECT old FROM freed)) AND {rules.HOLD_LAPSED}
"""

# Unit first (a reserve that took over a lapsed hold holds it, and then it no longer points
# at this reservation), then a share lock on the promo row: it re-checks the promo is still
# open and waits for any change to the row in flight (cancel, end, deactivate), yet
# purchases do not block each other. Then one more sale in the unit's slot, then the
# reservation, then the purchase log's row (`purchase_log.py`): it reads the reservation
# just updated, so the transaction has its id before the row takes its log id, which the
# sealer relies on; an identity id and the right edge of the primary key, no shared row.
_PURCHASE = f"""
WITH r0 AS (
    SELECT r.id, r.promo_id, r.unit_id, r.status, r.expires_at, {rules.HOLD_LIVE} AS live
    FROM reservations r WHERE r.id = $1 AND r.user_id = $2
),
unit AS (
    UPDATE promo_units u SET state = 'sold'
    FROM r0
    WHERE u.id = r0.unit_id AND u.reservation_id = r0.id AND u.state = 'held' AND r0.live
    RETURNING u.id, u.seq
),
promo AS MATERIALIZED (
    SELECT p.id, p.promo_price_cents, pr.currency
    FROM promos p JOIN r0 ON p.id = r0.promo_id JOIN products pr ON pr.id = p.product_id
    WHERE EXISTS (SELECT 1 FROM unit) AND {rules.OPEN}
    FOR SHARE OF p
),
tally AS (
    INSERT INTO promo_sales AS sa (promo_id, slot, sold, last_sold_at)
    SELECT promo.id, {rules.sales_slot("unit.seq")}, 1, now() FROM promo CROSS JOIN unit
    ON CONFLICT (promo_id, slot)
        DO UPDATE SET sold = sa.sold + 1,
            last_sold_at = greatest(sa.last_sold_at, excluded.last_sold_at)
    RETURNING sa.promo_id
),
done AS (
    UPDATE reservations r SET status = 'purchased', updated_at = now()
    WHERE r.id = $1 AND EXISTS (SELECT 1 FROM tally)
    RETURNING r.id, r.promo_id, r.unit_id, r.user_id, r.status
),
logged AS (
    INSERT INTO purchase_log (reservation_id, promo_id, unit_id, user_id, price_cents, currency)
    SELECT d.id, d.promo_id, d.unit_id, d.user_id, promo.promo_price_cents, promo.currency
    FROM done d CROSS JOIN promo
)
SELECT r0.id, r0.promo_id, r0.expires_at, r0.status, r0.live,
       EXISTS (SELECT 1 FROM unit) AS unit_sold, d.status AS new_status
FROM r0 LEFT JOIN done d ON true
"""

_CANCEL = f"""
WITH r0 AS (
    SELECT r.id, r.unit_id, r.status, {rules.HOLD_LIVE} AS live
    FROM reservations r WHERE r.id = $1 AND r.user_id = $2
),
unit AS (
    UPDATE promo_units u SET state = 'free', reservation_id = NULL
    FROM r0
    WHERE u.id = r0.unit_id AND u.reservation_id = r0.id AND u.state = 'held'
      AND r0.status = 'held'
    RETURNING u.id
),
done AS (
    UPDATE reservations r
    SET status = CASE WHEN r0.live THEN 'cancelled' ELSE 'expired' END, updated_at = now()
    FROM r0
    WHERE r.id = r0.id AND r.status = 'held' AND (EXISTS (SELECT 1 FROM unit) OR NOT r0.live)
    RETURNING r.status
)
SELECT r0.status, d.status AS new_status FROM r0 LEFT JOIN done d ON true
"""

# A hold past its expiry reads as `expired` even before anything rewrites the row.
_SHOWN_STATUS = f"CASE WHEN {rules.HOLD_LAPSED} THEN 'expired' ELSE r.status END"
_GET = f"""
SELECT r.id, r.promo_id, r.expires_at, {_SHOWN_STATUS} AS status
FROM reservations r WHERE r.id = $1 AND r.user_id = $2
"""
# With what the caller needs to recognise each: the promo's title and price, the product,
# the store, and when a purchase was made (a purchase is final: its `updated_at`).
_LIST = f"""
SELECT r.id, r.promo_id, r.expires_at, {_SHOWN_STATUS} AS status, r.created_at,
       CASE WHEN r.status = 'purchased' THEN r.updated_at END AS purchased_at,
       p.title AS promo_title, p.promo_price_cents, pr.price_cents, pr.currency,
       pr.name AS product_name, s.name AS store_name
FROM reservations r
JOIN promos p ON p.id = r.promo_id
JOIN products pr ON pr.id = p.product_id
JOIN stores s ON s.id = pr.store_id
WHERE r.user_id = $1
  AND ($3::uuid IS NULL OR r.promo_id = $3)
  AND ($4::timestamptz IS NULL OR (r.created_at, r.id) < ($4::timestamptz, $5::uuid))
ORDER BY r.created_at DESC, r.id DESC
LIMIT $2
"""


_NAMES = ("p_promo", "p_user", "p_ttl")


# One round trip: the lock, then the claim (after the release when the caller's own hold has
# lapsed), each its own statement inside one plpgsql call, so each gets a fresh snapshot and
# the claim sees the previous holder's commit. The claim runs again while claimable units
# exist but every one met was locked by a concurrent reserve (which may yet roll back): a
# miss changes nothing, so running it again is safe; without the retry that reserve could
# answer a momentary `sold-out`. The pauses are `CLAIM_RETRY_DELAYS`. No row: no promo.
# The schema holds the function as migration 0011 wrote it; a test checks it is this text,
# so a change here needs a migration that replaces it.
# One reserve in a plpgsql body: the claim (after the release when the caller's own hold
# has lapsed), run again while claimable units exist but every one met was being claimed;
# leaves the claim's answer in `c`, or returns no row when there is no promo.
_RESERVE_ONE = f"""    FOREACH pause IN ARRAY {RETRY_PAUSES} LOOP
        released := false;
        LOOP
            {named(_CLAIM, _NAMES)}
            INTO c;
            IF NOT FOUND THEN
                RETURN;
            END IF;
            EXIT WHEN NOT c.release_first;
            -- Whoever else took the unit meanwhile retired the hold with it.
            IF released THEN
                RAISE EXCEPTION 'a lapsed hold outlived release';
            END IF;
            {named(_RELEASE, _NAMES)};
            released := true;
        END LOOP;
        EXIT WHEN pause IS NULL OR c.hold_id IS NOT NULL OR c.claimable_left IS NOT TRUE;
        PERFORM pg_sleep(pause * (0.5 + random()));
    END LOOP;"""
RESERVE_FUNCTION_BODY = f"""
#variable_conflict use_column
DECLARE
    c record;
    pause float8;
    released boolean;
BEGIN
    PERFORM {xact_lock_sql(LockNamespace.PROMO_USER, "p_promo::text || ':' || p_user::text")};
{_RESERVE_ONE}
    RETURN QUERY SELECT c.open, c.eligible, c.used, c.max_per_user, c.live_id,
        c.live_expires_at, c.hold_id, c.hold_expires_at, c.sold_out;
END
"""
# Both reserve functions plan their statements with sequential scans off. plpgsql caches
# a generic plan of each statement from its sixth run on a connection and keeps it until an
# ANALYZE (or DDL) of a table it reads; made while `reservations` was a page or two (a new
# database's first crowd), it scanned the table where an index seeks, and every reserve
# read more as holds piled up until autovacuum next analyzed the table (measured: 0.5 ms
# and 100 buffers a reserve over the first 2,000 holds, 4.6 ms and 610 at 20,000). Every
# step is meant to seek, so no plan of theirs needs a sequential scan; the setting holds
# only inside the call (docs/decisions.md, "A reserve's plan outlives the table sizes").
RESERVE_SETTINGS = {"enable_seqscan": "off"}
_SET = "".join(f"\nSET {name} = {value}" for name, value in RESERVE_SETTINGS.items())
RESERVE_FUNCTION = f"""
CREATE OR REPLACE FUNCTION promo_reserve(p_promo uuid, p_user uuid, p_ttl integer)
RETURNS TABLE (open boolean, eligible boolean, used bigint, max_per_user integer,
               live_id uuid, live_expires_at timestamptz, hold_id uuid,
               hold_expires_at timestamptz, sold_out boolean)
LANGUAGE plpgsql{_SET} AS $reserve${RESERVE_FUNCTION_BODY}$reserve$
"""
_RESERVE = "SELECT * FROM promo_reserve($1, $2, $3)"


@dataclass
class Reserved:
    reservation: ReservationOut
    created: bool


def _out(row: asyncpg.Record) -> ReservationOut:
    return ReservationOut(
        id=row["id"], promo_id=row["promo_id"], expires_at=row["expires_at"], status=row["status"]
    )


# Coalesced reserves of one promo (app/core/coalesce.py): one call for a batch of requests,
# in one transaction. Every caller's lock in uuid order (batches that share users take them
# in the same order; a single reserve takes one). Then one set-based statement serves, at
# once, the plain case: the first request of each caller who may reserve (promo open,
# eligible, under `max_per_user`) and holds nothing on the promo, live or lapsed; those take,
# in arrival order, the free units met in `seq` order (`SKIP LOCKED`). Every request it did
# not serve (a second request of a caller, a caller with a live or a lapsed hold, not
# eligible, a closed promo, no free unit met) then runs alone, in arrival order, with the
# single reserve's statements and pauses, which decide its answer exactly as for a request
# on its own (a live hold again, the release of a lapsed one, a lapsed unit taken over,
# sold out); it sees the holds of the batch before it. A missing promo returns no row at
# all. Two batches can still deadlock in one rare case: a request whose own lapsed hold
# another batch has just taken over waits, in `_RELEASE`, for that batch, which holds units
# of its own meanwhile; PostgreSQL ends one of them and the batch is run once more
# (`retry_transient`).
_RESERVE_SET = f"""
WITH req AS (
    SELECT r.ord::integer AS ord, r.user_id,
           row_number() OVER (PARTITION BY r.user_id ORDER BY r.ord) AS nth
    FROM unnest($2::uuid[]) WITH ORDINALITY AS r(user_id, ord)
),
cand AS MATERIALIZED (
    SELECT q.ord, q.user_id, p.max_per_user, used.n AS used,
           row_number() OVER (ORDER BY q.ord) AS slot
    FROM req q
    JOIN LATERAL ({rules.me_sql("q.user_id")}) me ON true
    CROSS JOIN promos p
    JOIN products pr ON pr.id = p.product_id
    JOIN stores s ON s.id = pr.store_id
    CROSS JOIN LATERAL (
        SELECT count(*) FILTER (WHERE r.status = 'purchased' OR {rules.HOLD_LIVE}) AS n,
               count(*) FILTER (WHERE r.status = 'held') AS holds
        FROM reservations r
        WHERE r.promo_id = p.id AND r.user_id = q.user_id) used
    WHERE p.id = $1 AND q.nth = 1 AND {rules.OPEN} AND {rules.ELIGIBLE}
      AND used.n < p.max_per_user AND used.holds = 0
),
free AS MATERIALIZED (
    SELECT f.id, row_number() OVER (ORDER BY f.seq) AS slot
    FROM (SELECT u.id, u.seq FROM promo_units u
          WHERE u.promo_id = $1 AND u.state = 'free'
          ORDER BY u.seq LIMIT (SELECT count(*) FROM cand)
          FOR UPDATE SKIP LOCKED) f
),
pairs AS (
    SELECT c.ord, c.user_id, c.used, c.max_per_user, f.id AS unit_id
    FROM cand c JOIN free f USING (slot)
),
hold AS (
    INSERT INTO reservations (promo_id, user_id, unit_id, expires_at)
    SELECT $1, pairs.user_id, pairs.unit_id, now() + $3::int * interval '1 second' FROM pairs
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
"""
_SET_NAMES = ("p_promo", "p_users", "p_ttl")
_RESERVE_ONE_IN_LOOP = textwrap.indent(_RESERVE_ONE, "    ")
RESERVE_BATCH_FUNCTION_BODY = f"""
#variable_conflict use_column
DECLARE
    c record;
    i integer;
    p_user uuid;
    pause float8;
    released boolean;
    served integer[] := '{{}}';
BEGIN
    FOR p_user IN SELECT DISTINCT u FROM unnest(p_users) AS u ORDER BY u LOOP
        PERFORM {xact_lock_sql(LockNamespace.PROMO_USER, "p_promo::text || ':' || p_user::text")};
    END LOOP;
    FOR c IN {named(_RESERVE_SET, _SET_NAMES)}
    LOOP
        served := served || c.ord;
        RETURN QUERY SELECT c.ord, true, true, c.used, c.max_per_user, NULL::uuid,
            NULL::timestamptz, c.hold_id, c.hold_expires_at, NULL::boolean;
    END LOOP;
    FOR i IN 1 .. cardinality(p_users) LOOP
        CONTINUE WHEN i = ANY (served);
        p_user := p_users[i];
{_RESERVE_ONE_IN_LOOP}
        RETURN QUERY SELECT i, c.open, c.eligible, c.used, c.max_per_user, c.live_id,
            c.live_expires_at, c.hold_id, c.hold_expires_at, c.sold_out;
    END LOOP;
END
"""
RESERVE_BATCH_FUNCTION = f"""
CREATE OR REPLACE FUNCTION promo_reserve_batch(p_promo uuid, p_users uuid[], p_ttl integer)
RETURNS TABLE (ord integer, open boolean, eligible boolean, used bigint,
               max_per_user integer, live_id uuid, live_expires_at timestamptz, hold_id uuid,
               hold_expires_at timestamptz, sold_out boolean)
LANGUAGE plpgsql{_SET} AS $reserve${RESERVE_BATCH_FUNCTION_BODY}$reserve$
"""
_RESERVE_BATCH = "SELECT * FROM promo_reserve_batch($1, $2::text::uuid[], $3) ORDER BY ord"


async def reserve(
    conn: asyncpg.Connection, promo_id: uuid.UUID, user_id: uuid.UUID, ttl_seconds: int
) -> Reserved:
    """Hold one unit for `ttl_seconds`; a caller with a live hold gets it back."""
    row = await conn.fetchrow(_RESERVE, promo_id, user_id, ttl_seconds)
    if row is None:
        raise NotFound(f"No promo {promo_id}.")
    return _reserved(row, promo_id)


async def reserve_batch(
    conn: asyncpg.Connection, promo_id: uuid.UUID, users: Sequence[uuid.UUID], ttl_seconds: int
) -> list[Reserved | Exception]:
    """Reserves of one promo for a batch of callers, in one call: each caller's hold or the
    problem it alone would have got, in order."""
    rows = await conn.fetch(_RESERVE_BATCH, promo_id, uuid_array(users), ttl_seconds)
    if not rows:
        return [NotFound(f"No promo {promo_id}.") for _ in users]
    assert len(rows) == len(users)
    outcomes: list[Reserved | Exception] = []
    for row in rows:
        try:
            outcomes.append(_reserved(row, promo_id))
        except Exception as exc:  # a problem for this request only
            outcomes.append(exc)
    return outcomes


def _reserved(row: asyncpg.Record, promo_id: uuid.UUID) -> Reserved:
    """The hold a reserve took (or the caller's live one), or the problem it answers."""
    if not row["open"]:
        raise PromoNotRunning(
            f"Promo {promo_id} is not running (draft, cancelled or outside its window)."
        )
    if row["sold_out"]:
        raise SoldOut(f"Promo {promo_id} is sold out.")
    if row["live_id"] is not None:
        return Reserved(
            ReservationOut(
                id=row["live_id"],
                promo_id=promo_id,
                expires_at=row["live_expires_at"],
                status="held",
            ),
            created=False,
        )
    if not row["eligible"]:
        raise NotEligible(
            "The promo is not for you: outside its segments or radius, or no location set."
        )
    if row["used"] >= row["max_per_user"]:
        raise PurchaseLimitReached(
            f"You already have {row['used']} of the {row['max_per_user']} units allowed per user."
        )
    if row["hold_id"] is None:
        raise SoldOut(f"No unit of promo {promo_id} is left.")
    out = ReservationOut(
        id=row["hold_id"], promo_id=promo_id, expires_at=row["hold_expires_at"], status="held"
    )
    return Reserved(out, created=True)


async def get_reservation(
    conn: asyncpg.Connection, reservation_id: uuid.UUID, user_id: uuid.UUID
) -> ReservationOut:
    """The caller's reservation; anyone else's is 404."""
    row = await conn.fetchrow(_GET, reservation_id, user_id)
    if row is None:
        raise NotFound(f"No reservation {reservation_id}.")
    return _out(row)


async def purchase(
    conn: asyncpg.Connection, reservation_id: uuid.UUID, user_id: uuid.UUID
) -> ReservationOut:
    """Buy the held unit (idempotent: a purchased reservation answers the same). Once every
    unit is sold the promo reads as sold out (`rules.SOLD_OUT`, from the sales slots)."""
    row = await conn.fetchrow(_PURCHASE, reservation_id, user_id)
    if row is None:
        raise NotFound(f"No reservation {reservation_id}.")
    if row["new_status"] is not None:
        return ReservationOut(
            id=row["id"], promo_id=row["promo_id"], expires_at=row["expires_at"], status="purchased"
        )
    if row["unit_sold"]:
        # The unit was ours but the promo closed meanwhile; raising rolls the unit back.
        raise PromoNotRunning("The promo was cancelled or ended; the reservation cannot be bought.")
    # Lost a race or nothing to do: read the reservation as it is now (fresh snapshot).
    current = await get_reservation(conn, reservation_id, user_id)
    if current.status == "purchased":
        return current
    raise ReservationExpired(
        f"Reservation {reservation_id} is {current.status}; reserve again.",
    )


async def cancel(
    conn: asyncpg.Connection, reservation_id: uuid.UUID, user_id: uuid.UUID
) -> ReservationOut:
    """Release a hold and its unit (harmless if already released); a purchase is 409."""
    row = await conn.fetchrow(_CANCEL, reservation_id, user_id)
    if row is None:
        raise NotFound(f"No reservation {reservation_id}.")
    current = await get_reservation(conn, reservation_id, user_id)
    if current.status == "purchased":
        raise ReservationExpired(f"Reservation {reservation_id} was purchased; it is not held.")
    return current


async def retire_lapsed_holds(conn: asyncpg.Connection | PoolConnectionProxy, limit: int) -> int:
    """Retire up to `limit` lapsed holds of any promo, oldest first, freeing their units;
    returns how many. Its own short transaction (the worker's connection autocommits)."""
    status: str = await conn.execute(_RETIRE_LAPSED, limit)
    return int(status.rsplit(" ", 1)[-1])


async def my_reservations(
    session: AsyncSession,
    user_id: uuid.UUID,
    limit: int,
    promo_id: uuid.UUID | None,
    after: tuple[datetime, uuid.UUID] | None,
) -> list[tuple[MyReservationOut, datetime]]:
    """The caller's reservations, newest first, with `created_at` for the cursor."""
    conn = await raw_connection(session)
    after_at, after_id = after if after is not None else (None, None)
    rows = await conn.fetch(_LIST, user_id, limit, promo_id, after_at, after_id)
    fields = MyReservationOut.model_fields
    return [
        (MyReservationOut.model_validate({k: r[k] for k in fields}), r["created_at"]) for r in rows
    ]
