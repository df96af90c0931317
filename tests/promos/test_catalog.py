"""Admin CRUD of stores, products and promos; input validation; derived promo status."""

from __future__ import annotations

from datetime import datetime

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from tests.helpers import ApiUser, assert_problem
from tests.promos.support import create_product, create_promo, create_store, uid, window


async def test_store_crud_round_trip(client: httpx.AsyncClient, admin: ApiUser) -> None:
    resp = await client.post(
        "/api/v1/stores",
        json={"name": "Centro", "lat": 40.4168, "lng": -3.7038, "address": "Sol 1"},
        headers=admin.headers,
    )
    assert resp.status_code == 201, resp.text
    store = resp.json()
    assert resp.headers["Location"] == f"/api/v1/stores/{store['id']}"
    assert (await client.get(resp.headers["Location"], headers=admin.headers)).json() == store

    patched = await client.patch(
        f"/api/v1/stores/{store['id']}", json={"address": None}, headers=admin.headers
    )
    assert patched.status_code == 200 and patched.json()["address"] is None

    listed = await client.get("/api/v1/stores?limit=500", headers=admin.headers)
    assert store["id"] in [s["id"] for s in listed.json()["items"]]

    gone = await client.delete(f"/api/v1/stores/{store['id']}", headers=admin.headers)
    assert gone.status_code == 204
    missing = await client.get(f"/api/v1/stores/{store['id']}", headers=admin.headers)
    assert_problem(missing, 404, "not-found")


async def test_store_pagination_walks_every_store(
    client: httpx.AsyncClient, admin: ApiUser
) -> None:
    for i in range(3):
        await create_store(client, admin, 10.0 + i, 10.0)
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": "2", **({"cursor": cursor} if cursor else {})}
        page = (await client.get("/api/v1/stores", params=params, headers=admin.headers)).json()
        seen += [s["id"] for s in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) >= 3


async def test_store_input_is_validated(client: httpx.AsyncClient, admin: ApiUser) -> None:
    bad_bodies = [
        {"name": "x", "lat": 91, "lng": 0},
        {"name": "x", "lat": 0, "lng": -180.5},
        {"name": "x", "lat": "1", "lng": 0},
        {"name": "x", "lat": True, "lng": 0},
        {"name": "bad\x00name", "lat": 0, "lng": 0},
        {"name": "", "lat": 0, "lng": 0},
        {"name": "x", "lat": 0, "lng": 0, "extra": 1},
        {"name": None, "lat": 0, "lng": 0},
    ]
    for body in bad_bodies:
        resp = await client.post("/api/v1/stores", json=body, headers=admin.headers)
        assert_problem(resp, 422, "validation-error")
    nan = await client.post(
        "/api/v1/stores",
        content=b'{"name": "x", "lat": NaN, "lng": 0}',
        headers={**admin.headers, "Content-Type": "application/json"},
    )
    assert_problem(nan, 422, "validation-error")
    patch_null = await client.patch(
        f"/api/v1/stores/{uid()}", json={"name": None}, headers=admin.headers
    )
    assert_problem(patch_null, 422, "validation-error")


async def test_catalog_is_admin_only(client: httpx.AsyncClient, user: ApiUser) -> None:
    resp = await client.post(
        "/api/v1/stores", json={"name": "x", "lat": 0, "lng": 0}, headers=user.headers
    )
    assert_problem(resp, 403, "forbidden")
    assert_problem(await client.get("/api/v1/promos", headers=user.headers), 403, "forbidden")
    assert_problem(await client.get("/api/v1/stores"), 401, "unauthenticated")


async def test_product_needs_a_known_store_and_strict_price(
    client: httpx.AsyncClient, admin: ApiUser
) -> None:
    unknown = await client.post(
        "/api/v1/products",
        json={"store_id": uid(), "name": "x", "price_cents": 1},
        headers=admin.headers,
    )
    assert_problem(unknown, 422, "validation-error")
    store = await create_store(client, admin, 1.0, 1.0)
    for price in ["100", 1.5, -1, True]:
        resp = await client.post(
            "/api/v1/products",
            json={"store_id": store["id"], "name": "x", "price_cents": price},
            headers=admin.headers,
        )
        assert_problem(resp, 422, "validation-error")
    product = await create_product(client, admin, store["id"])
    assert product["currency"] == "EUR"
    in_use = await client.delete(f"/api/v1/stores/{store['id']}", headers=admin.headers)
    assert_problem(in_use, 409, "conflict")
    patched = await client.patch(
        f"/api/v1/products/{product['id']}", json={"price_cents": 275}, headers=admin.headers
    )
    assert patched.json()["price_cents"] == 275
    listed = await client.get(
        "/api/v1/products", params={"store_id": store["id"]}, headers=admin.headers
    )
    assert [p["id"] for p in listed.json()["items"]] == [product["id"]]


async def test_promo_create_defaults_units_and_stats(
    client: httpx.AsyncClient, admin: ApiUser, conn: AsyncConnection
) -> None:
    resp_promo = await create_promo(client, admin, quantity=5)
    assert resp_promo["status"] == "running"
    assert resp_promo["max_per_user"] == 1 and resp_promo["radius_m"] == 2000
    assert resp_promo["active"] is True and resp_promo["segment_ids"] == []
    units = (
        await conn.execute(
            text("SELECT count(*) FROM promo_units WHERE promo_id = :id AND state = 'free'"),
            {"id": resp_promo["id"]},
        )
    ).scalar_one()
    assert units == 5
    stats = await client.get(f"/api/v1/promos/{resp_promo['id']}/stats", headers=admin.headers)
    assert stats.json() == {
        "units": 5,
        "free": 5,
        "held": 0,
        "sold": 0,
        "notified": 0,
        "reservations": 0,
    }


async def test_promo_status_follows_flags_and_clock(
    client: httpx.AsyncClient, admin: ApiUser
) -> None:
    scheduled = await create_promo(client, admin, **window(10, 20))
    ended = await create_promo(client, admin, **window(-20, -10))
    draft = await create_promo(client, admin, active=False)
    running = await create_promo(client, admin)
    assert [p["status"] for p in (scheduled, ended, draft, running)] == [
        "scheduled",
        "ended",
        "draft",
        "running",
    ]
    cancelled = await client.post(f"/api/v1/promos/{running['id']}/cancel", headers=admin.headers)
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    again = await client.post(f"/api/v1/promos/{running['id']}/cancel", headers=admin.headers)
    assert again.json()["cancelled_at"] == cancelled.json()["cancelled_at"]
    only_drafts = await client.get(
        "/api/v1/promos", params={"status": "draft", "limit": 500}, headers=admin.headers
    )
    assert draft["id"] in [p["id"] for p in only_drafts.json()["items"]]
    assert {p["status"] for p in only_drafts.json()["items"]} == {"draft"}


async def test_promo_input_is_validated(client: httpx.AsyncClient, admin: ApiUser) -> None:
    store = await create_store(client, admin, 2.0, 2.0)
    product = await create_product(client, admin, store["id"])
    base = {"product_id": product["id"], "title": "t", "promo_price_cents": 1, **window()}
    bad = [
        {**base, "quantity": 0},
        {**base, "quantity": "3"},
        {**base, "max_per_user": 0},
        {**base, "radius_m": 0},
        {**base, "promo_price_cents": -5},
        {**base, "active": "yes"},
        {**base, **window(10, 5)},
        {**base, "starts_at": "2026-11-23T12:00:00"},
        {**base, "starts_at": "0001-01-01T00:00:00+14:00"},
        {**base, "segment_ids": [uid()]},
        {**base, "product_id": uid()},
        {**base, "title": "nul\x00"},
    ]
    for body in bad:
        resp = await client.post("/api/v1/promos", json=body, headers=admin.headers)
        assert_problem(resp, 422, "validation-error")


async def test_promo_patch_and_quantity_changes(
    client: httpx.AsyncClient, admin: ApiUser, conn: AsyncConnection
) -> None:
    promo = await create_promo(client, admin, quantity=3)
    url = f"/api/v1/promos/{promo['id']}"
    grown = await client.patch(url, json={"quantity": 6, "title": "More"}, headers=admin.headers)
    assert grown.status_code == 200, grown.text
    assert grown.json()["quantity"] == 6 and grown.json()["title"] == "More"
    shrunk = await client.patch(url, json={"quantity": 2}, headers=admin.headers)
    assert shrunk.json()["quantity"] == 2
    count = await conn.execute(
        text("SELECT count(*) FROM promo_units WHERE promo_id = :id"), {"id": promo["id"]}
    )
    assert count.scalar_one() == 2
    bad_window = await client.patch(
        url, json={"ends_at": promo["starts_at"]}, headers=admin.headers
    )
    assert_problem(bad_window, 422, "validation-error")
    assert_problem(
        await client.patch(url, json={"title": None}, headers=admin.headers),
        422,
        "validation-error",
    )
    assert_problem(
        await client.patch(f"/api/v1/promos/{uid()}", json={"title": "x"}, headers=admin.headers),
        404,
        "not-found",
    )


async def test_promo_delete_only_before_reservations(
    client: httpx.AsyncClient, admin: ApiUser
) -> None:
    promo = await create_promo(client, admin)
    resp = await client.delete(f"/api/v1/promos/{promo['id']}", headers=admin.headers)
    assert resp.status_code == 204
    assert_problem(
        await client.get(f"/api/v1/promos/{promo['id']}", headers=admin.headers), 404, "not-found"
    )
    assert_problem(
        await client.get(f"/api/v1/promos/{uid()}/stats", headers=admin.headers), 404, "not-found"
    )


async def _job_statuses(conn: AsyncConnection, promo_id: str) -> list[str]:
    rows = await conn.execute(
        text("SELECT status FROM outbox WHERE topic = 'promo.started' AND key = :id ORDER BY id"),
        {"id": promo_id},
    )
    return [r[0] for r in rows]


async def test_promo_start_notification_is_scheduled_and_cancelled(
    client: httpx.AsyncClient, admin: ApiUser, conn: AsyncConnection
) -> None:
    promo = await create_promo(client, admin, **window(10, 20))
    assert await _job_statuses(conn, promo["id"]) == ["pending"]
    run_at = await conn.execute(
        text(
            "SELECT run_at = CAST(:at AS timestamptz) FROM outbox"
            " WHERE topic = 'promo.started' AND key = :id"
        ),
        {"id": promo["id"], "at": datetime.fromisoformat(promo["starts_at"])},
    )
    assert run_at.scalar_one() is True
    await client.patch(
        f"/api/v1/promos/{promo['id']}", json={"active": False}, headers=admin.headers
    )
    assert await _job_statuses(conn, promo["id"]) == ["cancelled"]
    await client.patch(
        f"/api/v1/promos/{promo['id']}", json={"active": True}, headers=admin.headers
    )
    assert await _job_statuses(conn, promo["id"]) == ["cancelled", "pending"]
    await client.post(f"/api/v1/promos/{promo['id']}/cancel", headers=admin.headers)
    assert await _job_statuses(conn, promo["id"]) == ["cancelled", "cancelled"]
    draft = await create_promo(client, admin, active=False)
    assert await _job_statuses(conn, draft["id"]) == []
