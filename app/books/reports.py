"""A book's report: codes assigned, locked, redeemed and rolled back per hour or day, from
the history (every transition writes one entry)."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from app.books.schemas import BookReportOut, BookReportPoint
from app.core.db import raw_connection
from app.core.problems import NotFound
from app.core.report import Bucket, series_sql, window

COUNTS_SQL = """
SELECT date_trunc($4, h.at, 'UTC') AS bucket,
       count(*) FILTER (WHERE h.action = 'assigned') AS assigned,
       count(*) FILTER (WHERE h.action = 'locked') AS locked,
       count(*) FILTER (WHERE h.action = 'redeemed') AS redeemed,
       count(*) FILTER (WHERE h.action = 'rolled_back') AS rolled_back
FROM redemption_history h
WHERE h.book_id = $1 AND h.at >= $2 AND h.at < $3
GROUP BY 1
"""
REPORT_SQL = series_sql(COUNTS_SQL)
_FIELDS = ("assigned", "locked", "redeemed", "rolled_back")


async def book_report(
    session: AsyncSession,
    book_id: uuid.UUID,
    bucket: Bucket,
    since: datetime | None,
    until: datetime | None,
) -> BookReportOut:
    start, end = window(bucket, since, until)
    conn = await raw_connection(session)
    if not await conn.fetchval("SELECT EXISTS (SELECT 1 FROM books WHERE id = $1)", book_id):
        raise NotFound(f"No book {book_id}.")
    rows = await conn.fetch(REPORT_SQL, book_id, start, end, bucket.value)
    return BookReportOut(
        bucket=bucket,
        since=start,
        until=end,
        points=[BookReportPoint(at=r["at"], **{f: r[f] or 0 for f in _FIELDS}) for r in rows],
    )
