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


# `code` is a code's (book, id), found once (there is at most one), so every filter is on the
# history's own columns.
_WHERE = """
($1::uuid IS NULL OR h.book_id = $1)
AND ($2::text IS NULL OR (h.code_id = (SELECT c.id FROM codes c WHERE c.code = $2)
                          AND h.book_id = (SELECT c.book_id FROM codes c WHERE c.code = $2)))
AND ($3::uuid IS NULL OR h.user_id = $3)
AND ($4::text IS NULL OR h.action = $4)
AND ($5::timestamptz IS NULL OR h.at >= $5)
AND ($6::timestamptz IS NULL OR h.at < $6)
AND ($7::bigint IS NULL OR h.id < $7)
"""
_COLUMNS = (
    "h.id, h.at, h.action, c.code, h.book_id, h.user_id, h.actor_id, h.details::text AS details"
)

_LIST = f"""
SELECT {_COLUMNS}
FROM redemption_history h JOIN codes c ON c.book_id = h.book_id AND c.id = h.code_id
WHERE {_WHERE}
ORDER BY h.id DESC
LIMIT $8
"""

# Filtered (by book, code, user, action or `until`), the page's ids come first, from an
# index alone (`(book_id, id)`, `(user_id, id)`, `(action, id)`, `(at, id)`...), then its
# rows. In one pass, with the rows joined in, the planner took the primary key backwards
# whenever the filter matched many rows, and read all the history that came after the
# matches: an action last seen long ago, a busy book's history behind another's newer
# rows, an `until` weeks back. Unfiltered, or only `since` (the newest rows match at once),
# the one-pass query reads the newest rows directly.
_PAGE_OF_IDS = f"""
    SELECT h.id FROM redemption_history h
    WHERE {_WHERE}
    ORDER BY h.id DESC
    LIMIT $8
"""

# A closed window (`since` and `until`) is read whole, from `(at, id)` alone, and its newest
# ids kept: its cost is its own rows, never what came after it. Left to itself the planner
# still went backwards through everything newer: it cannot know that time follows the id.
_PAGE_OF_WINDOW = f"""
    SELECT w.id FROM (SELECT h.id FROM redemption_history h WHERE {_WHERE} OFFSET 0) AS w
    ORDER BY w.id DESC
    LIMIT $8
"""

_LIST_BY_INDEX = """
WITH page AS MATERIALIZED ({page})
SELECT {columns}
FROM page
JOIN redemption_history h ON h.id = page.id
JOIN codes c ON c.book_id = h.book_id AND c.id = h.code_id
ORDER BY h.id DESC
"""


def list_sql(filters: HistoryFilter) -> str:
    """The page query for these filters: $1 book, $2 code, $3 user, $4 action, $5 since,
    $6 until, $7 cursor (last id), $8 limit."""
    if filters.since is not None and filters.until is not None:
        return _LIST_BY_INDEX.format(page=_PAGE_OF_WINDOW, columns=_COLUMNS)
    if filters == HistoryFilter() or filters == HistoryFilter(since=filters.since):
        return _LIST
    return _LIST_BY_INDEX.format(page=_PAGE_OF_IDS, columns=_COLUMNS)


async def list_history(
    session: AsyncSession, filters: HistoryFilter, limit: int, before: int | None
) -> list[HistoryEntry]:
    """Newest first, keyset-paginated on the entry id."""
    conn = await raw_connection(session)
    rows = await conn.fetch(
        list_sql(filters),
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
