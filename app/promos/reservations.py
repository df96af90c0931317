"""Reserve, purchase and cancel: the hot paths, as hand-written SQL on the asyncpg connection
under the request's session (the request owns the transaction; nothing here commits).

Invariants, held by the statements below and backed by constraints:
- a unit is `free`, `held` by exactly one reservation, or `sold`; a `held` unit whose
  reservation is past `expires_at` (database clock) is claimable, so no sweeper is needed;
- a user has at most one `held` reservation per promo (partial unique index) and at most
  `max_per_user` purchases plus live holds (advisory lock per promo and user);
- a unit is sold once (one purchased reservation per unit; units never outnumber the
  quantity), and each sale adds one to its unit's slot in `promo_sales`, never to the promo
  row, so purchases of one promo do not queue behind each other.
Lock order is always unit, then promo, then sales slot, then reservation, so the paths never
deadlock.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

import asyncpg
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.db import raw_connection
from app.core.locking import LockNamespace, retry_skipped_claims, xact_lock_sql
from app.core.problems import NotFound
from app.promos import rules
from app.promos.errors import (
    NotEligible,
    PromoNotRunning,
    PurchaseLimitReached,
    ReservationExpired,
    SoldOut,
)
from app.promos.schemas import ReservationOut

# Its own statement: under READ COMMITTED the next statement's snapshot is taken after the
# lock is granted, so it sees the previous holder's commit. In one statement it would not.
_LOCK_KEY = "$1::uuid::text || ':' || $2::uuid::text"
_LOCK = f"SELECT {xact_lock_sql(LockNamespace.PROMO_USER, _LOCK_KEY)}"

# One statement: judge the promo and the caller, then claim one unit (a free one first, else
# one whose hold lapsed) with SKIP LOCKED so concurrent callers take different rows, retire
# the lapsed reservations it replaces (the caller's own lapsed hold too, freeing its unit:
# the partial unique index admits one `held` row per user), and insert the hold.
# MATERIALIZED keeps each claim to exactly one row (an inlined sub-select may be re-run by
# the planner). Units are locked before reservations (`released` runs before `retired`).
_RESERVE = f"""
WITH me AS ({rules.me_sql("$2")}),
verdict AS (
    SELECT p.id, p.max_per_user, {rules.OPEN} AS open,
           EXISTS (SELECT 1 FROM me WHERE {rules.ELIGIBLE}) AS eligible,
           (SELECT count(*) FROM reservations r
             WHERE r.promo_id = p.id AND r.user_id = $2
               AND (r.status = 'purchased' OR (r.status = 'held' AND r.expires_at > now())))
             AS used
    FROM promos p
    JOIN products pr ON pr.id = p.product_id
    JOIN stores s ON s.id = pr.store_id
    WHERE p.id = $1
),
live AS (
    SELECT r.id, r.expires_at FROM reservations r
    WHERE r.promo_id = $1 AND r.user_id = $2 AND r.status = 'held' AND r.expires_at > now()
),
gate AS (
    SELECT 1 FROM verdict v
    WHERE v.open AND v.eligible AND v.used < v.max_per_user
      AND NOT EXISTS (SELECT 1 FROM live)
),
free_unit AS MATERIALIZED (
    SELECT u.id, NULL::uuid AS old FROM promo_units u
    WHERE u.promo_id = $1 AND u.state = 'free' AND EXISTS (SELECT 1 FROM gate)
    ORDER BY u.seq
    LIMIT 1
    FOR UPDATE SKIP LOCKED
),
lapsed_unit AS MATERIALIZED (
    SELECT u.id, u.reservation_id AS old FROM promo_units u
    JOIN reservations r ON r.id = u.reservation_id
    WHERE u.promo_id = $1 AND u.state = 'held' AND r.expires_at <= now()
      AND EXISTS (SELECT 1 FROM gate) AND NOT EXISTS (SELECT 1 FROM free_unit)
    ORDER BY r.expires_at
    LIMIT 1
    FOR UPDATE OF u SKIP LOCKED
),
unit AS (SELECT * FROM free_unit UNION ALL SELECT * FROM lapsed_unit),
released AS (
    UPDATE promo_units u SET state = 'free', reservation_id = NULL
    WHERE u.promo_id = $1 AND u.state = 'held' AND EXISTS (SELECT 1 FROM unit)
      AND u.id NOT IN (SELECT id FROM unit)
      AND u.reservation_id IN (
          SELECT r.id FROM reservations r
          WHERE r.promo_id = $1 AND r.user_id = $2 AND r.status = 'held'
            AND r.expires_at <= now())
    RETURNING u.id
),
retired AS (
    UPDATE reservations r SET status = 'expired', updated_at = now()
    WHERE r.status = 'held' AND r.expires_at <= now() AND EXISTS (SELECT 1 FROM unit)
      AND (r.id IN (SELECT old FROM unit) OR (r.promo_id = $1 AND r.user_id = $2))
      AND (SELECT count(*) FROM released) >= 0
    RETURNING r.id
),
hold AS (
    INSERT INTO reservations (promo_id, user_id, unit_id, expires_at)
    SELECT $1, $2, unit.id, now() + $3::int * interval '1 second'
    FROM unit
    WHERE (SELECT count(*) FROM retired) >= 0
    RETURNING id, expires_at, unit_id
),
claim AS (
    UPDATE promo_units u SET state = 'held', reservation_id = hold.id
    FROM hold WHERE u.id = hold.unit_id
    RETURNING u.id
)
SELECT v.open, v.eligible, v.used, v.max_per_user,
       l.id AS live_id, l.expires_at AS live_expires_at,
       h.id AS hold_id, h.expires_at AS hold_expires_at,
       (SELECT count(*) FROM claim) AS claimed,
       -- Only asked when nothing was claimed: a sold-out promo has no unit to claim.
       CASE WHEN h.id IS NULL THEN (SELECT {rules.SOLD_OUT} FROM promos p WHERE p.id = $1)
       END AS sold_out,
       CASE WHEN EXISTS (SELECT 1 FROM gate) AND NOT EXISTS (SELECT 1 FROM hold) THEN (
           EXISTS (SELECT 1 FROM promo_units u WHERE u.promo_id = $1 AND u.state = 'free')
           OR EXISTS (SELECT 1 FROM promo_units u JOIN reservations r ON r.id = u.reservation_id
                      WHERE u.promo_id = $1 AND u.state = 'held' AND r.expires_at <= now()))
       END AS claimable_left
FROM verdict v
LEFT JOIN live l ON true
LEFT JOIN hold h ON true
"""

# Unit first (a reserve that took over a lapsed hold holds it, and then it no longer points
# at this reservation), then a share lock on the promo row: it re-checks the promo is still
# open and waits for any change to the row in flight (cancel, end, deactivate), yet
# purchases do not block each other. Then one more sale in the unit's slot, then the
# reservation.
_PURCHASE = f"""
WITH r0 AS (
    SELECT r.id, r.promo_id, r.unit_id, r.status, r.expires_at, r.expires_at > now() AS live
    FROM reservations r WHERE r.id = $1 AND r.user_id = $2
),
unit AS (
    UPDATE promo_units u SET state = 'sold'
    FROM r0
    WHERE u.id = r0.unit_id AND u.reservation_id = r0.id AND u.state = 'held'
      AND r0.status = 'held' AND r0.live
    RETURNING u.id, u.seq
),
promo AS MATERIALIZED (
    SELECT p.id FROM promos p JOIN r0 ON p.id = r0.promo_id
    WHERE EXISTS (SELECT 1 FROM unit) AND {rules.OPEN}
    FOR SHARE OF p
),
tally AS (
    INSERT INTO promo_sales AS sa (promo_id, slot, sold, last_sold_at)
    SELECT promo.id, unit.seq % 16, 1, now() FROM promo CROSS JOIN unit
    ON CONFLICT (promo_id, slot)
        DO UPDATE SET sold = sa.sold + 1,
            last_sold_at = greatest(sa.last_sold_at, excluded.last_sold_at)
    RETURNING sa.promo_id
),
done AS (
    UPDATE reservations r SET status = 'purchased', updated_at = now()
    WHERE r.id = $1 AND EXISTS (SELECT 1 FROM tally)
    RETURNING r.status
)
SELECT r0.id, r0.promo_id, r0.expires_at, r0.status, r0.live,
       EXISTS (SELECT 1 FROM unit) AS unit_sold, d.status AS new_status
FROM r0 LEFT JOIN done d ON true
"""

_CANCEL = """
WITH r0 AS (
    SELECT r.id, r.unit_id, r.status, r.expires_at > now() AS live
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
_SHOWN_STATUS = (
    "CASE WHEN r.status = 'held' AND r.expires_at <= now() THEN 'expired' ELSE r.status END"
)
_GET = f"""
SELECT r.id, r.promo_id, r.expires_at, {_SHOWN_STATUS} AS status
FROM reservations r WHERE r.id = $1 AND r.user_id = $2
"""
_LIST = f"""
SELECT r.id, r.promo_id, r.expires_at, {_SHOWN_STATUS} AS status, r.created_at
FROM reservations r
WHERE r.user_id = $1
  AND ($3::uuid IS NULL OR r.promo_id = $3)
  AND ($4::timestamptz IS NULL OR (r.created_at, r.id) < ($4::timestamptz, $5::uuid))
ORDER BY r.created_at DESC, r.id DESC
LIMIT $2
"""


async def _claim(
    conn: asyncpg.Connection, promo_id: uuid.UUID, user_id: uuid.UUID, ttl_seconds: int
) -> asyncpg.Record | None:
    """The reserve statement, retried while claimable units exist but every one met was
    locked by a concurrent reserve (which may yet roll back). A miss changes nothing, so
    running it again is safe; without the retry that reserve could answer a momentary
    `sold-out`."""

    async def attempt() -> asyncpg.Record | None:
        return await conn.fetchrow(_RESERVE, promo_id, user_id, ttl_seconds)

    return await retry_skipped_claims(attempt, lambda row: row is None or not row["claimable_left"])


@dataclass
class Reserved:
    reservation: ReservationOut
    created: bool


def _out(row: asyncpg.Record) -> ReservationOut:
    return ReservationOut(
        id=row["id"], promo_id=row["promo_id"], expires_at=row["expires_at"], status=row["status"]
    )


async def reserve(
    conn: asyncpg.Connection, promo_id: uuid.UUID, user_id: uuid.UUID, ttl_seconds: int
) -> Reserved:
    """Hold one unit for `ttl_seconds`; a caller with a live hold gets it back."""
    await conn.execute(_LOCK, promo_id, user_id)
    row = await _claim(conn, promo_id, user_id, ttl_seconds)
    if row is None:
        raise NotFound(f"No promo {promo_id}.")
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
    assert row["claimed"] == 1, "a hold was inserted without claiming its unit"
    return Reserved(
        ReservationOut(
            id=row["hold_id"], promo_id=promo_id, expires_at=row["hold_expires_at"], status="held"
        ),
        created=True,
    )


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
    """Buy the held unit (idempotent: a purchased reservation answers the same). Selling the
    last unit marks the promo sold out."""
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


async def my_reservations(
    session: AsyncSession,
    user_id: uuid.UUID,
    limit: int,
    promo_id: uuid.UUID | None,
    after: tuple[datetime, uuid.UUID] | None,
) -> list[tuple[ReservationOut, datetime]]:
    """The caller's reservations, newest first, with `created_at` for the cursor."""
    conn = await raw_connection(session)
    after_at, after_id = after if after is not None else (None, None)
    rows = await conn.fetch(_LIST, user_id, limit, promo_id, after_at, after_id)
    return [(_out(r), r["created_at"]) for r in rows]
