from __future__ import annotations

import httpx
from sqlalchemy.ext.asyncio import AsyncConnection

from tests.books.flows import assign, book_with_codes
from tests.books.helpers import API, history_count
from tests.conftest import MakeUser
from tests.helpers import ApiUser, assert_problem


async def test_assign_random_gives_user_a_code(
    client: httpx.AsyncClient, admin: ApiUser, user: ApiUser, conn: AsyncConnection
) -> None:
    book, codes = await book_with_codes(client, admin)
    resp = await client.post(f"{API}/books/{book['id']}/assign", headers=user.headers)
    assert resp.status_code == 201, resp.text
    code = resp.json()
    assert code["code"] in codes
    assert code["status"] == "assigned"
    assert code["user_id"] == str(user.id)
    assert code["redemptions"] == 0 and code["redemptions_left"] == 1
    assert resp.headers["location"] == f"/api/v1/codes/{code['code']}"
    assert await history_count(conn, book["id"], "assigned") == 1
    mine = (await client.get(f"{API}/me/codes", headers=user.headers)).json()
    assert [c["code"] for c in mine["items"]] == [code["code"]]


async def test_second_assign_over_limit_is_409(
    client: httpx.AsyncClient, admin: ApiUser, user: ApiUser, conn: AsyncConnection
) -> None:
    book, _ = await book_with_codes(client, admin)
    await assign(client, user, book["id"])
    resp = await client.post(f"{API}/books/{book['id']}/assign", headers=user.headers)
    assert_problem(resp, 409, "code-limit-reached")
    assert await history_count(conn, book["id"]) == 1


async def test_assign_exhausted_book_is_409(
    client: httpx.AsyncClient, admin: ApiUser, make_user: MakeUser
) -> None:
    book, _ = await book_with_codes(client, admin, n=1)
    await assign(client, await make_user(), book["id"])
    resp = await client.post(
        f"{API}/books/{book['id']}/assign", headers=(await make_user()).headers
    )
    assert_problem(resp, 409, "book-exhausted")


async def test_assign_inactive_book_is_409(
    client: httpx.AsyncClient, admin: ApiUser, user: ApiUser
) -> None:
    book, _ = await book_with_codes(client, admin)
    await client.patch(
        f"{API}/books/{book['id']}", json={"status": "paused"}, headers=admin.headers
    )
    resp = await client.post(f"{API}/books/{book['id']}/assign", headers=user.headers)
    assert_problem(resp, 409, "book-inactive")
    expired, _ = await book_with_codes(
        client, admin, starts_at="2020-01-01T00:00:00Z", expires_at="2021-01-01T00:00:00Z"
    )
    resp = await client.post(f"{API}/books/{expired['id']}/assign", headers=user.headers)
    assert_problem(resp, 409, "book-inactive")


async def test_user_cannot_assign_to_someone_else_but_admin_can(
    client: httpx.AsyncClient, admin: ApiUser, user: ApiUser, make_user: MakeUser
) -> None:
    book, _ = await book_with_codes(client, admin)
    other = await make_user()
    resp = await client.post(
        f"{API}/books/{book['id']}/assign", json={"user_id": str(other.id)}, headers=user.headers
    )
    assert_problem(resp, 403, "forbidden")
    resp = await client.post(
        f"{API}/books/{book['id']}/assign", json={"user_id": str(other.id)}, headers=admin.headers
    )
    assert resp.status_code == 201 and resp.json()["user_id"] == str(other.id)
    resp = await client.post(
        f"{API}/books/{book['id']}/assign",
        json={"user_id": "00000000-0000-0000-0000-000000000001"},
        headers=admin.headers,
    )
    assert_problem(resp, 404, "not-found")


async def test_assign_specific_code_case_insensitive(
    client: httpx.AsyncClient, admin: ApiUser, user: ApiUser, make_user: MakeUser
) -> None:
    _, codes = await book_with_codes(client, admin)
    resp = await client.post(f"{API}/codes/{codes[0].lower()}/assign", headers=user.headers)
    assert resp.status_code == 201, resp.text
    assert resp.json()["code"] == codes[0]
    again = await client.post(f"{API}/codes/{codes[0]}/assign", headers=(await make_user()).headers)
    assert_problem(again, 409, "code-unavailable")
    over = await client.post(f"{API}/codes/{codes[1]}/assign", headers=user.headers)
    assert_problem(over, 409, "code-limit-reached")
    missing = await client.post(f"{API}/codes/NOPE-NOPE/assign", headers=user.headers)
    assert_problem(missing, 404, "not-found")
