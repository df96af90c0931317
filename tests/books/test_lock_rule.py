"""Lock liveness is one rule (`app.books.rules`): every reader of a code agrees on it. A live
lock reads as `locked` everywhere; the same lock once lapsed reads as `assigned` everywhere,
with no `locked_until`, and needs no `lock_id`."""

from __future__ import annotations

import csv
import io
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from tests.books.flows import assign, book_with_codes
from tests.books.helpers import API, history_count
from tests.helpers import ApiUser


async def _readings(
    client: httpx.AsyncClient, admin: ApiUser, user: ApiUser, book_id: str, code: str
) -> dict[str, Any]:
    """What each reader of the code says about its lock."""
    one = (await client.get(f"{API}/codes/{code}", headers=user.headers)).json()
    stats = (await client.get(f"{API}/books/{book_id}", headers=admin.headers)).json()["stats"]
    listed = f"{API}/books/{book_id}/codes"
    by_status = {
        status: [
            c["code"]
            for c in (await client.get(f"{listed}?status={status}", headers=admin.headers)).json()[
                "items"
            ]
        ]
        for status in ("assigned", "locked")
    }
    mine = {
        status: [
            c["code"]
            for c in (
                await client.get(f"{API}/me/codes?status={status}", headers=user.headers)
            ).json()["items"]
        ]
        for status in ("assigned", "locked")
    }
    exported = await client.get(f"{API}/books/{book_id}/codes.csv", headers=admin.headers)
    csv_status = {row[0]: row[1] for row in csv.reader(io.StringIO(exported.text))}[code]
    validated = await client.post(f"{API}/codes/{code}/validate", headers=user.headers)
    return {
        "code": (one["status"], one["locked_until"] is not None),
        "stats": (stats["assigned"], stats["locked"]),
        "book listing": (code in by_status["assigned"], code in by_status["locked"]),
        "my listing": (code in mine["assigned"], code in mine["locked"]),
        "export": csv_status,
        "validate without lock_id": validated.json()["problem"],
    }


@pytest.mark.parametrize("lapsed", [False, True], ids=["live", "lapsed"])
async def test_every_reader_applies_the_one_lock_rule(
    client: httpx.AsyncClient,
    admin: ApiUser,
    user: ApiUser,
    conn: AsyncConnection,
    lapsed: bool,
) -> None:
    book, _ = await book_with_codes(client, admin)
    code = (await assign(client, user, book["id"]))["code"]
    locked = await client.post(f"{API}/codes/{code}/lock", headers=user.headers)
    assert locked.status_code == 200, locked.text
    if lapsed:
        await conn.execute(
            text("UPDATE codes SET locked_until = now() - interval '1 second' WHERE code = :c"),
            {"c": code},
        )
    readings = await _readings(client, admin, user, book["id"], code)
    if lapsed:
        assert readings == {
            "code": ("assigned", False),
            "stats": (1, 0),
            "book listing": (True, False),
            "my listing": (True, False),
            "export": "assigned",
            "validate without lock_id": None,
        }
    else:
        assert readings == {
            "code": ("locked", True),
            "stats": (0, 1),
            "book listing": (False, True),
            "my listing": (False, True),
            "export": "locked",
            "validate without lock_id": "code-locked",
        }


async def test_a_lapsed_lock_is_no_lock_for_the_writers(
    client: httpx.AsyncClient, admin: ApiUser, user: ApiUser, conn: AsyncConnection
) -> None:
    """Unlocking a lapsed lock changes nothing and writes no history; locking again needs no
    `lock_id` and gets a new one; redeeming ignores a stale `lock_id`."""
    book, _ = await book_with_codes(client, admin)
    code = (await assign(client, user, book["id"]))["code"]
    first = (await client.post(f"{API}/codes/{code}/lock", headers=user.headers)).json()
    lapse = text("UPDATE codes SET locked_until = now() - interval '1 second' WHERE code = :c")
    await conn.execute(lapse, {"c": code})
    before = await history_count(conn, book["id"])
    unlocked = await client.post(f"{API}/codes/{code}/unlock", headers=admin.headers)
    assert unlocked.status_code == 200 and unlocked.json()["status"] == "assigned"
    assert await history_count(conn, book["id"]) == before

    relocked = await client.post(f"{API}/codes/{code}/lock", headers=user.headers)
    assert relocked.status_code == 200, relocked.text
    assert relocked.json()["lock_id"] != first["lock_id"]

    await conn.execute(lapse, {"c": code})
    redeemed = await client.post(
        f"{API}/codes/{code}/redeem", json={"lock_id": first["lock_id"]}, headers=user.headers
    )
    assert redeemed.status_code == 200, redeemed.text
