"""Who sees and may reserve a promo: radius around the store and segments."""

from __future__ import annotations

import json
import uuid

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from tests.conftest import MakeUser
from tests.helpers import ApiUser, assert_problem
from tests.promos.support import (
    create_product,
    create_promo,
    create_store,
    north_of,
    place,
    random_point,
    reserve,
)


async def _segment(
    conn: AsyncConnection, kind: str, rules: dict[str, object], members: tuple[uuid.UUID, ...] = ()
) -> str:
    seg_id = (
        await conn.execute(
            text(
                "INSERT INTO segments (name, kind, rules)"
                " VALUES ('s', :kind, CAST(:rules AS jsonb)) RETURNING id"
            ),
            {"kind": kind, "rules": json.dumps(rules)},
        )
    ).scalar_one()
    for member in members:
        await conn.execute(
            text("INSERT INTO segment_members (segment_id, user_id) VALUES (:s, :u)"),
            {"s": seg_id, "u": member},
        )
    return str(seg_id)


async def _my_promo_ids(client: httpx.AsyncClient, user: ApiUser) -> list[str]:
    resp = await client.get("/api/v1/me/promos", headers=user.headers)
    assert resp.status_code == 200, resp.text
    return [p["id"] for p in resp.json()]


async def test_no_location_sees_nothing(
    client: httpx.AsyncClient, admin: ApiUser, user: ApiUser
) -> None:
    await create_promo(client, admin)
    resp = await client.get("/api/v1/me/promos", headers=user.headers)
    assert resp.status_code == 200 and resp.json() == []


async def test_radius_edge_just_inside_and_just_outside(
    client: httpx.AsyncClient, admin: ApiUser, make_user: MakeUser
) -> None:
    lat, lng = random_point()
    promo = await create_promo(client, admin, at=(lat, lng), radius_m=1000, quantity=2)
    inside, outside = await make_user(), await make_user()
    await place(client, inside, *north_of(lat, lng, 995))
    await place(client, outside, *north_of(lat, lng, 1005))

    seen = (await client.get("/api/v1/me/promos", headers=inside.headers)).json()
    assert [p["id"] for p in seen] == [promo["id"]]
    assert 990 < seen[0]["distance_m"] < 1000
    assert seen[0]["units_left"] == 2
    assert await _my_promo_ids(client, outside) == []

    assert (await reserve(client, inside, promo["id"])).status_code == 201
    assert_problem(await reserve(client, outside, promo["id"]), 403, "not-eligible")


async def test_default_radius_is_two_km(
    client: httpx.AsyncClient, admin: ApiUser, make_user: MakeUser
) -> None:
    lat, lng = random_point()
    promo = await create_promo(client, admin, at=(lat, lng))
    near, far = await make_user(), await make_user()
    await place(client, near, *north_of(lat, lng, 1990))
    await place(client, far, *north_of(lat, lng, 2010))
    assert await _my_promo_ids(client, near) == [promo["id"]]
    assert await _my_promo_ids(client, far) == []


async def test_nearest_first_and_only_running(
    client: httpx.AsyncClient, admin: ApiUser, user: ApiUser
) -> None:
    lat, lng = random_point()
    far = await create_promo(client, admin, at=north_of(lat, lng, 1500))
    near = await create_promo(client, admin, at=north_of(lat, lng, 300))
    store = await create_store(client, admin, *north_of(lat, lng, 100))
    product = await create_product(client, admin, store["id"])
    await create_promo(client, admin, product_id=product["id"], active=False)
    cancelled = await create_promo(client, admin, product_id=product["id"])
    await client.post(f"/api/v1/promos/{cancelled['id']}/cancel", headers=admin.headers)
    await place(client, user, lat, lng)
    listed = (await client.get("/api/v1/me/promos", headers=user.headers)).json()
    assert [p["id"] for p in listed] == [near["id"], far["id"]]
    assert listed[0]["distance_m"] < listed[1]["distance_m"]
    assert listed[0]["store_id"] and listed[0]["product_name"] == "Croissant"


async def test_static_segment_members_only(
    client: httpx.AsyncClient, admin: ApiUser, make_user: MakeUser, conn: AsyncConnection
) -> None:
    member, stranger = await make_user(), await make_user()
    segment = await _segment(conn, "static", {}, (member.id,))
    lat, lng = random_point()
    promo = await create_promo(client, admin, at=(lat, lng), segment_ids=[segment], quantity=2)
    assert promo["segment_ids"] == [segment]
    for u in (member, stranger):
        await place(client, u, lat, lng)
    assert await _my_promo_ids(client, member) == [promo["id"]]
    assert await _my_promo_ids(client, stranger) == []
    assert (await reserve(client, member, promo["id"])).status_code == 201
    assert_problem(await reserve(client, stranger, promo["id"]), 403, "not-eligible")


async def test_rule_segment_by_tags_any_of_several_segments(
    client: httpx.AsyncClient, admin: ApiUser, make_user: MakeUser, conn: AsyncConnection
) -> None:
    vegan, other = await make_user(), await make_user()
    for u, tags in ((vegan, ["vegan"]), (other, ["meat"])):
        resp = await client.put("/api/v1/me/profile", json={"tags": tags}, headers=u.headers)
        assert resp.status_code == 200, resp.text
    rule = await _segment(conn, "rule", {"tags_any": ["vegan"]})
    empty_static = await _segment(conn, "static", {})
    lat, lng = random_point()
    promo = await create_promo(client, admin, at=(lat, lng), segment_ids=[empty_static, rule])
    for u in (vegan, other):
        await place(client, u, lat, lng)
    assert await _my_promo_ids(client, vegan) == [promo["id"]]
    assert await _my_promo_ids(client, other) == []


async def test_eligibility_is_rechecked_at_reserve(
    client: httpx.AsyncClient, admin: ApiUser, user: ApiUser
) -> None:
    lat, lng = random_point()
    promo = await create_promo(client, admin, at=(lat, lng))
    await place(client, user, lat, lng)
    assert await _my_promo_ids(client, user) == [promo["id"]]
    await place(client, user, *north_of(lat, lng, 5000))
    assert_problem(await reserve(client, user, promo["id"]), 403, "not-eligible")


async def test_running_lists_units_left_for_any_user(
    client: httpx.AsyncClient, admin: ApiUser, user: ApiUser
) -> None:
    lat, lng = random_point()
    promo = await create_promo(client, admin, at=(lat, lng), quantity=3)
    scheduled = await create_promo(
        client, admin, starts_at="2999-01-01T00:00:00Z", ends_at="2999-01-02T00:00:00Z"
    )
    await place(client, user, lat, lng)
    await reserve(client, user, promo["id"])
    items: dict[str, int] = {}
    cursor = None
    while True:
        params = {"limit": "200", **({"cursor": cursor} if cursor else {})}
        page = (
            await client.get("/api/v1/promos/running", params=params, headers=user.headers)
        ).json()
        items |= {p["id"]: p["units_left"] for p in page["items"]}
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert items[promo["id"]] == 2
    assert scheduled["id"] not in items


async def test_wide_radius_promo_is_found_from_the_promo_side(
    client: httpx.AsyncClient, admin: ApiUser, make_user: MakeUser
) -> None:
    lat, lng = random_point()
    wide = await create_promo(client, admin, at=(lat, lng), radius_m=30_000)
    local = await create_promo(client, admin, at=north_of(lat, lng, 25_500), radius_m=1000)
    near, far = await make_user(), await make_user()
    await place(client, near, *north_of(lat, lng, 25_000))
    await place(client, far, *north_of(lat, lng, 30_050))
    listed = (await client.get("/api/v1/me/promos", headers=near.headers)).json()
    assert [p["id"] for p in listed] == [local["id"], wide["id"]]
    assert 24_990 < listed[1]["distance_m"] < 25_010
    assert await _my_promo_ids(client, far) == []
    assert (await reserve(client, near, wide["id"])).status_code == 201


async def test_rule_segment_purchased_within_days(
    client: httpx.AsyncClient, admin: ApiUser, make_user: MakeUser, conn: AsyncConnection
) -> None:
    buyer, newcomer = await make_user(), await make_user()
    lat, lng = random_point()
    first = await create_promo(client, admin, at=(lat, lng))
    for u in (buyer, newcomer):
        await place(client, u, lat, lng)
    held = (await reserve(client, buyer, first["id"])).json()
    bought = await client.post(f"/api/v1/reservations/{held['id']}/purchase", headers=buyer.headers)
    assert bought.status_code == 200
    segment = await _segment(conn, "rule", {"purchased_within_days": 7})
    loyal = await create_promo(client, admin, at=(lat, lng), segment_ids=[segment])
    assert await _my_promo_ids(client, buyer) == [loyal["id"]]
    assert await _my_promo_ids(client, newcomer) == []
    await conn.execute(
        text("UPDATE reservations SET updated_at = now() - interval '8 days' WHERE id = :id"),
        {"id": held["id"]},
    )
    assert await _my_promo_ids(client, buyer) == []
