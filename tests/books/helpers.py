"""Helpers for the books tests: make a book, fill it, read the database."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tests.helpers import ApiUser

API = "/api/v1"


async def make_book(client: httpx.AsyncClient, admin: ApiUser, **settings: Any) -> dict[str, Any]:
    body = {"name": f"book-{uuid.uuid4().hex[:8]}", **settings}
    resp = await client.post(f"{API}/books", json=body, headers=admin.headers)
    assert resp.status_code == 201, resp.text
    book: dict[str, Any] = resp.json()
    return book


async def fill(
    client: httpx.AsyncClient, admin: ApiUser, book_id: str, codes: list[str]
) -> dict[str, Any]:
    resp = await client.post(
        f"{API}/books/{book_id}/codes",
        content="\n".join(codes).encode(),
        headers={**admin.headers, "Content-Type": "text/csv"},
    )
    assert resp.status_code == 201, resp.text
    out: dict[str, Any] = resp.json()
    return out


def unique_codes(n: int, prefix: str | None = None) -> list[str]:
    tag = prefix or uuid.uuid4().hex[:8].upper()
    return [f"{tag}-{i:06d}" for i in range(n)]


async def history_count(
    db: AsyncConnection | AsyncEngine, book_id: str, action: str | None = None
) -> int:
    sql = text(
        "SELECT count(*) FROM redemption_history WHERE book_id = :b"
        " AND (CAST(:a AS text) IS NULL OR action = :a)"
    )
    params = {"b": book_id, "a": action}
    if isinstance(db, AsyncEngine):
        async with db.connect() as conn:
            return int((await conn.execute(sql, params)).scalar_one())
    return int((await db.execute(sql, params)).scalar_one())
