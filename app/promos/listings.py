"""What users see: promos running now, and the ones the caller may reserve, nearest first.

Both are read paths called often, so they run hand-written SQL on the session's asyncpg
connection (prepared and cached per connection).
"""

from __future__ import annotations

import uuid
from datetime import datetime

import asyncpg
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.db import raw_connection
from app.promos import rules
from app.promos.schemas import EligiblePromo, PromoListing

_COLUMNS = f"""
    p.id, p.title, p.product_id, pr.name AS product_name, pr.price_cents,
    p.promo_price_cents, pr.currency, s.id AS store_id, s.name AS store_name, s.lat, s.lng,
    p.starts_at, p.ends_at, p.radius_m, {rules.UNITS_LEFT} AS units_left
"""

_RUNNING = f"""
    SELECT {_COLUMNS}
    FROM promos p
    JOIN products pr ON pr.id = p.product_id
    JOIN stores s ON s.id = pr.store_id
    WHERE NOT p.sold_out AND {rules.RUNNING}
      AND ($2::timestamptz IS NULL OR (p.ends_at, p.id) > ($2::timestamptz, $3::uuid))
    ORDER BY p.ends_at, p.id
    LIMIT $1
"""

# `NOT p.sold_out` (a mark the worker sets once every unit is sold) only lets `ix_promos_live`
# leave those promos out; `rules.RUNNING` still decides.
#
# Promos of local reach (radius up to LOCAL_REACH_M, the usual case) are found from the
# caller's side: the GiST index on stores gives the stores inside a box as wide as the
# largest such radius (an index-only scan of the live promos), then their products' promos.
# The few wider promos are taken from the promo side. Either way the exact distance and each
# promo's own radius decide. The candidates are MATERIALIZED: inlined, the planner misjudged
# how few they are and joined them by scanning every promo.
LOCAL_REACH_M = 10_000
_ELIGIBLE = f"""
    WITH me AS ({rules.me_sql("$1")}),
    reach AS (  -- an upper bound: sold-out promos may widen it, never narrow it
        SELECT coalesce(max(p.radius_m), 0) AS r FROM promos p
        WHERE NOT p.sold_out AND {rules.OPEN} AND p.radius_m <= {LOCAL_REACH_M}
    ),
    candidate AS MATERIALIZED (
        SELECT p.id FROM me
        CROSS JOIN reach
        JOIN stores s ON earth_box(me.e, reach.r) @> ll_to_earth(s.lat, s.lng)
        JOIN products pr ON pr.store_id = s.id
        JOIN promos p ON p.product_id = pr.id
        WHERE p.radius_m <= {LOCAL_REACH_M} AND NOT p.sold_out AND {rules.RUNNING}
        UNION ALL
        SELECT p.id FROM promos p
        WHERE p.radius_m > {LOCAL_REACH_M} AND NOT p.sold_out AND {rules.RUNNING}
          AND EXISTS (SELECT 1 FROM me)
    )
    SELECT {_COLUMNS}, {rules.DISTANCE} AS distance_m
    FROM candidate c
    JOIN promos p ON p.id = c.id
    JOIN products pr ON pr.id = p.product_id
    JOIN stores s ON s.id = pr.store_id
    CROSS JOIN me
    WHERE {rules.ELIGIBLE}
    ORDER BY distance_m, p.id
    LIMIT $2
"""


async def running_promos(
    session: AsyncSession, limit: int, after: tuple[datetime, uuid.UUID] | None
) -> list[PromoListing]:
    """Promos running now (not sold out), ending soonest first, with units left."""
    conn = await raw_connection(session)
    after_at, after_id = after if after is not None else (None, None)
    rows = await conn.fetch(_RUNNING, limit, after_at, after_id)
    return [PromoListing.model_validate(dict(r)) for r in rows]


async def eligible_promos(
    conn: asyncpg.Connection, user_id: uuid.UUID, limit: int
) -> list[EligiblePromo]:
    """Running promos the user may reserve: in one of its segments (or it has none) and
    within its radius of the user's last location; nearest first. None without location."""
    rows = await conn.fetch(_ELIGIBLE, user_id, limit)
    return [EligiblePromo.model_validate(dict(r)) for r in rows]
