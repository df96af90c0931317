"""Streamed CSV export of a book's codes, safe to open in a spreadsheet."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends
from sqlalchemy.ext.asyncio import AsyncSession

from app.api.deps import get_session
from app.books import rules
from app.core.db import raw_connection

# The session lives until the response has been sent (request scope), so the rows are
# read through a server-side cursor while they stream out.
StreamSession = Annotated[AsyncSession, Depends(get_session, scope="request")]

HEADER = b"code,status,user_id,assigned_at,redemptions\r\n"
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_BATCH = 5000

_ROWS = f"""
SELECT c.code,
       {rules.STATUS} AS status,
       c.user_id::text AS user_id,
       to_char(c.assigned_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"') AS assigned_at,
       c.redemptions::text AS redemptions
FROM codes c WHERE c.book_id = $1 ORDER BY c.id
"""


def cell(value: str | None) -> str:
    """A CSV cell; a leading `= + - @` (or tab/CR) would run as a formula: prefix `'`."""
    if value is None:
        return ""
    if value.startswith(_FORMULA_START):
        value = "'" + value
    if any(ch in value for ch in ',"\r\n'):
        value = '"' + value.replace('"', '""') + '"'
    return value


async def rows(session: AsyncSession, book_id: uuid.UUID) -> AsyncIterator[bytes]:
    """The CSV, a few thousand rows per chunk."""
    yield HEADER
    conn = await raw_connection(session)
    cursor = await conn.cursor(_ROWS, book_id)
    while True:
        batch = await cursor.fetch(_BATCH)
        if not batch:
            break
        yield "".join(",".join(cell(v) for v in record) + "\r\n" for record in batch).encode()
