"""`GET /me/books` (the books a user may claim from, by name) and the book context that
`GET /me/codes` carries."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from tests.books.flows import assign, book_with_codes
from tests.books.helpers import API
from tests.conftest import MakeUser
from tests.helpers import ApiUser, assert_problem


async def _mine(client: httpx.AsyncClient, who: ApiUser, **params: Any) -> list[dict[str, Any]]:
    resp = await client.get(f"{API}/me/books", params=params, headers=who.headers)
    assert resp.status_code == 200, resp.text
    out: list[dict[str, Any]] = resp.json()
    return out


async def test_lists_active_books_by_name_with_held_and_claimable_counts(
    client: httpx.AsyncClient, admin: ApiUser, user: ApiUser
) -> None:
    expires = (datetime.now(UTC) + timedelta(days=3)).replace(microsecond=0)
    limited, _ = await book_with_codes(
        client,
        admin,
        n=5,
        name="Zz limited",
        description="Two each",
        max_codes_per_user=2,
        expires_at=expires.isoformat(),
    )
    open_book, _ = await book_with_codes(
        client, admin, n=3, name="Aa open", max_codes_per_user=None
    )
    await assign(client, user, limited["id"])

    books = {b["id"]: b for b in await _mine(client, user)}
    assert books[limited["id"]] == {
        "id": limited["id"],
        "name": "Zz limited",
        "description": "Two each",
        "expires_at": expires.isoformat().replace("+00:00", "Z"),
        "held": 1,
        "may_claim": 1,
    }
    # No per-user limit: as many as are free.
    assert books[open_book["id"]]["held"] == 0
    assert books[open_book["id"]]["may_claim"] == 3
    ids = [b["id"] for b in await _mine(client, user)]
    assert ids.index(open_book["id"]) < ids.index(limited["id"])  # by name

    await assign(client, user, limited["id"])
    books = {b["id"]: b for b in await _mine(client, user)}
    assert books[limited["id"]]["held"] == 2 and books[limited["id"]]["may_claim"] == 0
    # Another user's counts are their own.
    assert {b["id"]: b for b in await _mine(client, admin)}[limited["id"]]["held"] == 0


async def test_leaves_out_paused_archived_and_not_yet_started_books(
    client: httpx.AsyncClient, admin: ApiUser, user: ApiUser
) -> None:
    paused, _ = await book_with_codes(client, admin)
    archived, _ = await book_with_codes(client, admin)
    later = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    upcoming, _ = await book_with_codes(client, admin, starts_at=later)
    running, _ = await book_with_codes(client, admin)
    for book, state in ((paused, "paused"), (archived, "archived")):
        resp = await client.patch(
            f"{API}/books/{book['id']}", json={"status": state}, headers=admin.headers
        )
        assert resp.status_code == 200, resp.text
    ids = {b["id"] for b in await _mine(client, user)}
    assert running["id"] in ids
    assert not ids & {paused["id"], archived["id"], upcoming["id"]}


async def test_limit_and_bad_queries(
    client: httpx.AsyncClient, admin: ApiUser, user: ApiUser
) -> None:
    await book_with_codes(client, admin)
    await book_with_codes(client, admin)
    assert len(await _mine(client, user, limit=1)) == 1
    for bad in ("0", "501", "many"):
        resp = await client.get(f"{API}/me/books?limit={bad}", headers=user.headers)
        assert_problem(resp, 422, "validation-error")
    assert_problem(await client.get(f"{API}/me/books"), 401, "unauthenticated")


async def test_my_codes_carry_the_books_name_expiry_and_state(
    client: httpx.AsyncClient, admin: ApiUser, make_user: MakeUser
) -> None:
    shopper = await make_user()
    expires = (datetime.now(UTC) + timedelta(days=7)).replace(microsecond=0)
    book, _ = await book_with_codes(
        client, admin, name="Spring promo", description="5 off", expires_at=expires.isoformat()
    )
    code = await assign(client, shopper, book["id"])
    resp = await client.get(f"{API}/me/codes", headers=shopper.headers)
    assert resp.status_code == 200, resp.text
    [mine] = resp.json()["items"]
    assert mine["code"] == code["code"]
    assert mine["book_name"] == "Spring promo"
    assert mine["book_description"] == "5 off"
    assert mine["book_expires_at"] == expires.isoformat().replace("+00:00", "Z")
    assert mine["book_active"] is True and mine["book_status"] == "active"

    resp = await client.patch(
        f"{API}/books/{book['id']}", json={"status": "paused"}, headers=admin.headers
    )
    assert resp.status_code == 200, resp.text
    [mine] = (await client.get(f"{API}/me/codes", headers=shopper.headers)).json()["items"]
    assert mine["book_active"] is False and mine["book_status"] == "paused"
