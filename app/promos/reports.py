"""A promo's report per hour or day: units reserved and sold (from its reservations), and
the delivery of its notifications (created, read)."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from app.core.db import raw_connection
from app.core.problems import NotFound
from app.core.report import Bucket, series_sql, window
from app.promos.schemas import PromoReportOut, PromoReportPoint

# Each part reads its table through the promo's index; a purchase is final, so a purchased
# reservation's `updated_at` is when it was bought.
COUNTS_SQL = """
SELECT bucket, sum(reserved) AS reserved, sum(purchased) AS purchased,
       sum(notified) AS notified, sum(read) AS read
FROM (
    SELECT date_trunc($4, r.created_at, 'UTC') AS bucket,
           1 AS reserved, 0 AS purchased, 0 AS notified, 0 AS read
    FROM reservations r WHERE r.promo_id = $1 AND r.created_at >= $2 AND r.created_at < $3
    UNION ALL
    SELECT date_trunc($4, r.updated_at, 'UTC'), 0, 1, 0, 0
    FROM reservations r
    WHERE r.promo_id = $1 AND r.status = 'purchased' AND r.updated_at >= $2 AND r.updated_at < $3
    UNION ALL
    SELECT date_trunc($4, n.created_at, 'UTC'), 0, 0, 1, 0
    FROM notifications n WHERE n.promo_id = $1 AND n.created_at >= $2 AND n.created_at < $3
    UNION ALL
    SELECT date_trunc($4, n.read_at, 'UTC'), 0, 0, 0, 1
    FROM notifications n WHERE n.promo_id = $1 AND n.read_at >= $2 AND n.read_at < $3
) AS events
GROUP BY bucket
"""
REPORT_SQL = series_sql(COUNTS_SQL)
_FIELDS = ("reserved", "purchased", "notified", "read")


async def promo_report(
    session: AsyncSession,
    promo_id: uuid.UUID,
    bucket: Bucket,
    since: datetime | None,
    until: datetime | None,
) -> PromoReportOut:
    start, end = window(bucket, since, until)
    conn = await raw_connection(session)
    if not await conn.fetchval("SELECT EXISTS (SELECT 1 FROM promos WHERE id = $1)", promo_id):
        raise NotFound(f"No promo {promo_id}.")
    rows = await conn.fetch(REPORT_SQL, promo_id, start, end, bucket.value)
    return PromoReportOut(
        bucket=bucket,
        since=start,
        until=end,
        points=[PromoReportPoint(at=r["at"], **{f: int(r[f] or 0) for f in _FIELDS}) for r in rows],
    )
