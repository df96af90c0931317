"""Shared setup of the code tests."""

from __future__ import annotations

from typing import Any

import httpx

from tests.books.helpers import API, fill, make_book, unique_codes
from tests.helpers import ApiUser


async def book_with_codes(
    client: httpx.AsyncClient, admin: ApiUser, n: int = 3, **settings: Any
) -> tuple[dict[str, Any], list[str]]:
    book = await make_book(client, admin, **settings)
    codes = unique_codes(n)
    await fill(client, admin, book["id"], codes)
    return book, codes


async def assign(client: httpx.AsyncClient, who: ApiUser, book_id: str) -> dict[str, Any]:
    resp = await client.post(f"{API}/books/{book_id}/assign", headers=who.headers)
    assert resp.status_code == 201, resp.text
    out: dict[str, Any] = resp.json()
    return out
