"""`POST /books/{id}/distribute/preview`: what a distribute would do, changing nothing, and
the same answer the distribute then gives."""

from __future__ import annotations

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from app.core.security import Role
from tests.books.helpers import API, fill, history_count, make_book, unique_codes
from tests.conftest import MakeUser
from tests.helpers import ApiUser, assert_problem


async def _codes_held(conn: AsyncConnection, book_id: str) -> int:
    sql = text("SELECT count(*) FROM codes WHERE book_id = :b AND user_id IS NOT NULL")
    return int((await conn.execute(sql, {"b": book_id})).scalar_one())


async def test_preview_counts_the_outcome_and_changes_nothing(
    client: httpx.AsyncClient, admin: ApiUser, make_user: MakeUser, conn: AsyncConnection
) -> None:
    book = await make_book(client, admin)  # one code per user
    await fill(client, admin, book["id"], unique_codes(3))
    users = [await make_user() for _ in range(5)]
    await client.post(f"{API}/books/{book['id']}/assign", headers=users[0].headers)
    unknown = "00000000-0000-0000-0000-000000000009"
    body = {"user_ids": [str(u.id) for u in users] + [unknown]}

    resp = await client.post(
        f"{API}/books/{book['id']}/distribute/preview", json=body, headers=admin.headers
    )
    assert resp.status_code == 200, resp.text
    assert resp.json() == {
        "audience": 5,
        "would_assign": 2,
        "already_holding": 1,
        "free_codes": 2,
        "skipped": {"limit_reached": 1, "exhausted": 2, "unknown_users": 1},
    }
    assert await _codes_held(conn, book["id"]) == 1
    assert await history_count(conn, book["id"], "assigned") == 1

    done = await client.post(
        f"{API}/books/{book['id']}/distribute", json=body, headers=admin.headers
    )
    assert done.status_code == 200, done.text
    assert done.json() == {"assigned": 2, "skipped": resp.json()["skipped"]}

    # Again: everyone who got one is at the limit now, and no code is left.
    again = await client.post(
        f"{API}/books/{book['id']}/distribute/preview", json=body, headers=admin.headers
    )
    assert again.json() == {
        "audience": 5,
        "would_assign": 0,
        "already_holding": 3,
        "free_codes": 0,
        "skipped": {"limit_reached": 3, "exhausted": 2, "unknown_users": 1},
    }


async def test_preview_of_a_segment_without_a_per_user_limit(
    client: httpx.AsyncClient, admin: ApiUser, make_user: MakeUser, conn: AsyncConnection
) -> None:
    book = await make_book(client, admin, max_codes_per_user=None)
    await fill(client, admin, book["id"], unique_codes(10))
    members = [await make_user() for _ in range(3)]
    seg_id = (
        await conn.execute(
            text("INSERT INTO segments (name, kind) VALUES ('p', 'static') RETURNING id")
        )
    ).scalar_one()
    for m in members:
        await conn.execute(
            text("INSERT INTO segment_members (segment_id, user_id) VALUES (:s, :u)"),
            {"s": seg_id, "u": m.id},
        )
    url = f"{API}/books/{book['id']}/distribute"
    body = {"segment_id": str(seg_id)}
    assert (await client.post(url, json=body, headers=admin.headers)).json()["assigned"] == 3
    # A repeat would give each member a second code: the preview says they already hold one.
    preview = (await client.post(f"{url}/preview", json=body, headers=admin.headers)).json()
    assert preview["audience"] == 3 and preview["would_assign"] == 3
    assert preview["already_holding"] == 3 and preview["free_codes"] == 7


async def test_preview_errors_match_distribute(
    client: httpx.AsyncClient, admin: ApiUser, make_user: MakeUser
) -> None:
    book = await make_book(client, admin)
    url = f"{API}/books/{book['id']}/distribute/preview"
    assert_problem(await client.post(url, json={}, headers=admin.headers), 422, "validation-error")
    missing = await client.post(
        url, json={"segment_id": "00000000-0000-0000-0000-000000000000"}, headers=admin.headers
    )
    assert_problem(missing, 404, "not-found")
    no_book = await client.post(
        f"{API}/books/00000000-0000-0000-0000-000000000000/distribute/preview",
        json={"user_ids": [str(admin.id)]},
        headers=admin.headers,
    )
    assert_problem(no_book, 404, "not-found")
    user = await make_user(Role.user)
    forbidden = await client.post(url, json={"user_ids": [str(user.id)]}, headers=user.headers)
    assert_problem(forbidden, 403, "forbidden")
    await client.patch(
        f"{API}/books/{book['id']}", json={"status": "paused"}, headers=admin.headers
    )
    paused = await client.post(url, json={"user_ids": [str(user.id)]}, headers=admin.headers)
    assert_problem(paused, 409, "book-inactive")
