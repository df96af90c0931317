"""Listing and clearing lockouts (admin)."""

from __future__ import annotations

from typing import Any

import asyncpg

from app.lockouts.schemas import LockoutOut

_PAGE = """
SELECT key, failures, window_started_at, locked_until FROM lockouts
WHERE locked_until > clock_timestamp() AND ($1::text IS NULL OR key > $1)
ORDER BY key LIMIT $2
"""


async def list_locked(conn: asyncpg.Connection, after: str | None, limit: int) -> list[LockoutOut]:
    """Keys locked now, by key."""
    return [LockoutOut(**dict(r)) for r in await conn.fetch(_PAGE, after, limit)]


async def clear(conn: asyncpg.Connection, key: str) -> dict[str, Any] | None:
    """Forget the key's failures (locked or not); the row as it was, or None if none."""
    row = await conn.fetchrow(
        "DELETE FROM lockouts WHERE key = $1"
        " RETURNING key, failures, window_started_at, locked_until",
        key,
    )
    return None if row is None else dict(row)
