"""The sold-out mark: `promos.sold_out` says every unit is sold, so `ix_promos_live` can leave
the promo out of the listings' scans. A sold-out promo is only ever read as such from its
sales slots (`rules.SOLD_OUT`); the mark is a hint that must never lie, never a fact the
answers depend on. Purchases do not set it (they would queue on the promo row again, which
`promo_sales` exists to avoid): the worker does, in a bounded sweep, and a larger quantity
clears it (a trigger)."""

from __future__ import annotations

from asyncpg import Connection
from asyncpg.pool import PoolConnectionProxy

from app.promos import rules

# Live promos not yet marked, soonest ending first. SKIP LOCKED: a promo being bought right
# now (purchases hold its row FOR SHARE) is left for the next sweep rather than waited on.
_MARK = f"""
WITH done AS MATERIALIZED (
    SELECT p.id FROM promos p
    WHERE p.active AND p.cancelled_at IS NULL AND NOT p.sold_out AND p.ends_at > now()
      AND {rules.SOLD_OUT}
    ORDER BY p.ends_at
    LIMIT $1
    FOR UPDATE OF p SKIP LOCKED
)
UPDATE promos p SET sold_out = true FROM done WHERE p.id = done.id
"""


async def mark_sold_out(conn: Connection | PoolConnectionProxy, limit: int) -> int:
    """Mark up to `limit` running promos whose every unit is sold; returns how many."""
    status: str = await conn.execute(_MARK, limit)
    return int(status.rsplit(" ", 1)[-1])
