"""Reading the append-only redemption history (written by the transitions themselves)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

import orjson
from sqlalchemy.ext.asyncio import AsyncSession

from app.books.schemas import Action, HistoryEntry
from app.core.db import raw_connection


@dataclass(frozen=True)
class HistoryFilter:
    book_id: uuid.UUID | None = None
    code: str | None = None
    user_id: uuid.UUID | None = None
    action: Action | None = None
    since: datetime | None = None
    until: datetime | None = None


_LIST = """
SELECT h.id, h.at, h.action, c.code, h.book_id, h.user_id, h.actor_id, h.details::text AS details
FROM redemption_history h JOIN codes c ON c.book_id = h.book_id AND c.id = h.code_id
WHERE ($1::uuid IS NULL OR h.book_id = $1)
  AND ($2::text IS NULL OR c.code = $2)
  AND ($3::uuid IS NULL OR h.user_id = $3)
  AND ($4::text IS NULL OR h.action = $4)
  AND ($5::timestamptz IS NULL OR h.at >= $5)
  AND ($6::timestamptz IS NULL OR h.at < $6)
  AND ($7::bigint IS NULL OR h.id < $7)
ORDER BY h.id DESC
LIMIT $8
"""


async def list_history(
    session: AsyncSession, filters: HistoryFilter, limit: int, before: int | None
) -> list[HistoryEntry]:
    """Newest first, keyset-paginated on the entry id."""
    conn = await raw_connection(session)
    rows = await conn.fetch(
        _LIST,
        filters.book_id,
        filters.code.upper() if filters.code is not None else None,
        filters.user_id,
        filters.action.value if filters.action is not None else None,
        filters.since,
        filters.until,
        before,
        limit,
    )
    return [
        HistoryEntry.model_validate({**dict(r), "details": orjson.loads(r["details"])})
        for r in rows
    ]
