from __future__ import annotations

from datetime import date

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from tests.conftest import MakeUser
from tests.helpers import ApiUser, assert_problem


async def _create(client: httpx.AsyncClient, admin: ApiUser, body: dict[str, object]) -> str:
    response = await client.post("/api/v1/segments", json=body, headers=admin.headers)
    assert response.status_code == 201, response.text
    assert response.headers["location"].endswith(response.json()["id"])
    return str(response.json()["id"])


async def test_static_segment_members_add_list_remove(
    client: httpx.AsyncClient, admin: ApiUser, make_user: MakeUser
) -> None:
    seg = await _create(client, admin, {"name": "beta", "kind": "static"})
    a, b = await make_user(), await make_user()
    url = f"/api/v1/segments/{seg}/members"
    added = await client.post(
        url, json={"user_ids": [str(a.id), str(b.id), str(a.id)]}, headers=admin.headers
    )
    assert added.json() == {"added": 2}
    again = await client.post(url, json={"user_ids": [str(a.id)]}, headers=admin.headers)
    assert again.json() == {"added": 0}
    listed = (await client.get(url, headers=admin.headers)).json()
    assert {m["user_id"] for m in listed["items"]} == {str(a.id), str(b.id)}
    gone = await client.delete(f"{url}/{a.id}", headers=admin.headers)
    assert gone.status_code == 204
    assert_problem(await client.delete(f"{url}/{a.id}", headers=admin.headers), 404, "not-found")
    listed = (await client.get(url, headers=admin.headers)).json()
    assert [m["user_id"] for m in listed["items"]] == [str(b.id)]


async def test_rule_segment_matches_tags_and_age(
    client: httpx.AsyncClient, admin: ApiUser, make_user: MakeUser, conn: AsyncConnection
) -> None:
    vip_adult, vip_child, plain_adult, vip_unknown_age = [await make_user() for _ in range(4)]
    rows = [
        (vip_adult, ["vip"], date(1990, 1, 1)),
        (vip_child, ["vip"], date(2020, 1, 1)),
        (plain_adult, ["other"], date(1980, 1, 1)),
        (vip_unknown_age, ["vip"], None),
    ]
    for u, tags, born in rows:
        await conn.execute(
            text("UPDATE users SET tags = :t, birth_date = :b WHERE id = :id"),
            {"t": tags, "b": born, "id": u.id},
        )
    seg = await _create(
        client,
        admin,
        {"name": "vip adults", "kind": "rule", "rules": {"tags_any": ["vip"], "age_min": 18}},
    )
    listed = await client.get(f"/api/v1/segments/{seg}/members?limit=500", headers=admin.headers)
    ids = {m["user_id"] for m in listed.json()["items"]}
    assert str(vip_adult.id) in ids
    assert not ids & {str(vip_child.id), str(plain_adult.id), str(vip_unknown_age.id)}


async def test_rule_segment_needs_rules_and_static_refuses_them(
    client: httpx.AsyncClient, admin: ApiUser
) -> None:
    r = await client.post(
        "/api/v1/segments", json={"name": "x", "kind": "rule"}, headers=admin.headers
    )
    assert_problem(r, 422, "validation-error")
    r = await client.post(
        "/api/v1/segments",
        json={"name": "x", "kind": "static", "rules": {"age_min": 3}},
        headers=admin.headers,
    )
    assert_problem(r, 422, "validation-error")
    r = await client.post(
        "/api/v1/segments",
        json={"name": "x", "kind": "rule", "rules": {"age_min": 30, "age_max": 20}},
        headers=admin.headers,
    )
    assert_problem(r, 422, "validation-error")


async def test_members_of_rule_segment_cannot_be_added(
    client: httpx.AsyncClient, admin: ApiUser, user: ApiUser
) -> None:
    seg = await _create(client, admin, {"name": "r", "kind": "rule", "rules": {"age_min": 1}})
    r = await client.post(
        f"/api/v1/segments/{seg}/members", json={"user_ids": [str(user.id)]}, headers=admin.headers
    )
    assert_problem(r, 422, "validation-error")


async def test_segment_patch_get_delete(client: httpx.AsyncClient, admin: ApiUser) -> None:
    seg = await _create(client, admin, {"name": "r", "kind": "rule", "rules": {"age_min": 1}})
    r = await client.patch(
        f"/api/v1/segments/{seg}",
        json={"name": "renamed", "rules": {"tags_any": ["a"]}},
        headers=admin.headers,
    )
    assert r.status_code == 200 and r.json()["name"] == "renamed"
    assert r.json()["rules"] == {"tags_any": ["a"]}
    assert (await client.get(f"/api/v1/segments/{seg}", headers=admin.headers)).status_code == 200
    assert (
        await client.delete(f"/api/v1/segments/{seg}", headers=admin.headers)
    ).status_code == 204
    assert_problem(
        await client.get(f"/api/v1/segments/{seg}", headers=admin.headers), 404, "not-found"
    )


async def test_segments_are_admin_only(client: httpx.AsyncClient, user: ApiUser) -> None:
    assert_problem(await client.get("/api/v1/segments", headers=user.headers), 403, "forbidden")
    assert_problem(await client.get("/api/v1/segments"), 401, "unauthenticated")
