"""Reserve, purchase and cancel through the API, one request at a time."""

from __future__ import annotations

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from tests.conftest import MakeUser
from tests.helpers import ApiUser, assert_problem
from tests.promos.support import create_promo, place, random_point, reserve, uid, window


async def _expire(conn: AsyncConnection, reservation_id: str) -> None:
    await conn.execute(
        text("UPDATE reservations SET expires_at = now() - interval '1 second' WHERE id = :id"),
        {"id": reservation_id},
    )


async def _stats(client: httpx.AsyncClient, admin: ApiUser, promo_id: str) -> dict[str, int]:
    resp = await client.get(f"/api/v1/promos/{promo_id}/stats", headers=admin.headers)
    assert resp.status_code == 200, resp.text
    stats: dict[str, int] = resp.json()
    return stats


async def _near_promo(
    client: httpx.AsyncClient, admin: ApiUser, *users: ApiUser, **fields: object
) -> dict[str, object]:
    lat, lng = random_point()
    promo = await create_promo(client, admin, at=(lat, lng), **fields)
    for u in users:
        await place(client, u, lat, lng)
    return promo


async def test_reserve_then_purchase_sells_the_last_unit(
    client: httpx.AsyncClient, admin: ApiUser, user: ApiUser
) -> None:
    promo = await _near_promo(client, admin, user)
    resp = await reserve(client, user, str(promo["id"]))
    assert resp.status_code == 201, resp.text
    held = resp.json()
    assert set(held) == {"id", "promo_id", "expires_at", "status"}
    assert held["status"] == "held" and held["promo_id"] == promo["id"]
    assert resp.headers["Location"] == f"/api/v1/reservations/{held['id']}"

    again = await reserve(client, user, str(promo["id"]))
    assert again.status_code == 200 and again.json() == held

    bought = await client.post(f"/api/v1/reservations/{held['id']}/purchase", headers=user.headers)
    assert bought.status_code == 200, bought.text
    assert bought.json()["status"] == "purchased"
    repeat = await client.post(f"/api/v1/reservations/{held['id']}/purchase", headers=user.headers)
    assert repeat.status_code == 200 and repeat.json() == bought.json()

    got = await client.get(f"/api/v1/promos/{promo['id']}", headers=admin.headers)
    assert got.json()["status"] == "sold_out" and got.json()["sold_out_at"] is not None
    assert await _stats(client, admin, str(promo["id"])) == {
        "units": 1,
        "free": 0,
        "held": 0,
        "sold": 1,
        "notified": 0,
        "reservations": 1,
    }
    assert_problem(await reserve(client, user, str(promo["id"])), 409, "sold-out")


async def test_sold_out_when_every_unit_is_held(
    client: httpx.AsyncClient, admin: ApiUser, make_user: MakeUser
) -> None:
    first, second = await make_user(), await make_user()
    promo = await _near_promo(client, admin, first, second)
    assert (await reserve(client, first, str(promo["id"]))).status_code == 201
    assert_problem(await reserve(client, second, str(promo["id"])), 409, "sold-out")


async def test_expired_hold_returns_its_unit_to_others(
    client: httpx.AsyncClient, admin: ApiUser, make_user: MakeUser, conn: AsyncConnection
) -> None:
    first, second = await make_user(), await make_user()
    promo = await _near_promo(client, admin, first, second)
    held = (await reserve(client, first, str(promo["id"]))).json()
    await _expire(conn, held["id"])
    stats = await _stats(client, admin, str(promo["id"]))
    assert (stats["free"], stats["held"]) == (1, 0)
    running = await client.get("/api/v1/promos/running?limit=500", headers=second.headers)
    left = {p["id"]: p["units_left"] for p in running.json()["items"]}
    assert left[promo["id"]] == 1

    taken = await reserve(client, second, str(promo["id"]))
    assert taken.status_code == 201, taken.text
    old = await client.get(f"/api/v1/reservations/{held['id']}", headers=first.headers)
    assert old.json()["status"] == "expired"
    late = await client.post(f"/api/v1/reservations/{held['id']}/purchase", headers=first.headers)
    assert_problem(late, 409, "reservation-expired")
    assert (
        await client.post(
            f"/api/v1/reservations/{taken.json()['id']}/purchase", headers=second.headers
        )
    ).status_code == 200


async def test_user_with_lapsed_hold_can_reserve_again(
    client: httpx.AsyncClient, admin: ApiUser, user: ApiUser, conn: AsyncConnection
) -> None:
    promo = await _near_promo(client, admin, user, quantity=2)
    first = (await reserve(client, user, str(promo["id"]))).json()
    await _expire(conn, first["id"])
    second = await reserve(client, user, str(promo["id"]))
    assert second.status_code == 201, second.text
    assert second.json()["id"] != first["id"]
    mine = await client.get(
        "/api/v1/me/reservations", params={"promo_id": promo["id"]}, headers=user.headers
    )
    assert sorted(r["status"] for r in mine.json()["items"]) == ["expired", "held"]
    # the lapsed hold's unit went back to free: every held unit names a held reservation
    dangling = await conn.execute(
        text(
            "SELECT count(*) FROM promo_units u JOIN reservations r ON r.id = u.reservation_id"
            " WHERE u.promo_id = :id AND u.state = 'held' AND r.status <> 'held'"
        ),
        {"id": promo["id"]},
    )
    assert dangling.scalar_one() == 0
    stats = await _stats(client, admin, str(promo["id"]))
    assert (stats["free"], stats["held"]) == (1, 1)


async def test_cancel_frees_the_unit(
    client: httpx.AsyncClient, admin: ApiUser, make_user: MakeUser
) -> None:
    first, second = await make_user(), await make_user()
    promo = await _near_promo(client, admin, first, second)
    held = (await reserve(client, first, str(promo["id"]))).json()
    cancelled = await client.post(
        f"/api/v1/reservations/{held['id']}/cancel", headers=first.headers
    )
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    again = await client.post(f"/api/v1/reservations/{held['id']}/cancel", headers=first.headers)
    assert again.status_code == 200 and again.json()["status"] == "cancelled"
    assert (await _stats(client, admin, str(promo["id"])))["free"] == 1
    bought = await client.post(f"/api/v1/reservations/{held['id']}/purchase", headers=first.headers)
    assert_problem(bought, 409, "reservation-expired")
    assert (await reserve(client, second, str(promo["id"]))).status_code == 201


async def test_cancel_of_a_purchase_is_409(
    client: httpx.AsyncClient, admin: ApiUser, user: ApiUser
) -> None:
    promo = await _near_promo(client, admin, user)
    held = (await reserve(client, user, str(promo["id"]))).json()
    await client.post(f"/api/v1/reservations/{held['id']}/purchase", headers=user.headers)
    resp = await client.post(f"/api/v1/reservations/{held['id']}/cancel", headers=user.headers)
    assert_problem(resp, 409, "reservation-expired")


async def test_another_users_reservation_is_404(
    client: httpx.AsyncClient, admin: ApiUser, make_user: MakeUser
) -> None:
    owner, other = await make_user(), await make_user()
    promo = await _near_promo(client, admin, owner)
    held = (await reserve(client, owner, str(promo["id"]))).json()
    for action in ("purchase", "cancel"):
        resp = await client.post(
            f"/api/v1/reservations/{held['id']}/{action}", headers=other.headers
        )
        assert_problem(resp, 404, "not-found")
    assert_problem(
        await client.get(f"/api/v1/reservations/{held['id']}", headers=other.headers),
        404,
        "not-found",
    )
    mine = await client.get("/api/v1/me/reservations", headers=other.headers)
    assert mine.json() == {"items": [], "next_cursor": None}
    assert_problem(await reserve(client, owner, uid()), 404, "not-found")


async def test_promo_not_running_cases(
    client: httpx.AsyncClient, admin: ApiUser, user: ApiUser
) -> None:
    for fields in (window(10, 20), window(-20, -10), {"active": False}):
        promo = await _near_promo(client, admin, user, **fields)
        assert_problem(await reserve(client, user, str(promo["id"])), 409, "promo-not-running")
    promo = await _near_promo(client, admin, user)
    await client.post(f"/api/v1/promos/{promo['id']}/cancel", headers=admin.headers)
    assert_problem(await reserve(client, user, str(promo["id"])), 409, "promo-not-running")


async def test_purchase_after_promo_cancelled_is_409_and_keeps_unit_held(
    client: httpx.AsyncClient, admin: ApiUser, user: ApiUser
) -> None:
    promo = await _near_promo(client, admin, user)
    held = (await reserve(client, user, str(promo["id"]))).json()
    await client.post(f"/api/v1/promos/{promo['id']}/cancel", headers=admin.headers)
    resp = await client.post(f"/api/v1/reservations/{held['id']}/purchase", headers=user.headers)
    assert_problem(resp, 409, "promo-not-running")
    stats = await _stats(client, admin, str(promo["id"]))
    assert (stats["sold"], stats["held"]) == (0, 1)


async def test_purchase_limit_counts_purchases_and_live_holds(
    client: httpx.AsyncClient, admin: ApiUser, user: ApiUser
) -> None:
    promo = await _near_promo(client, admin, user, quantity=5, max_per_user=2)
    for _ in range(2):
        held = (await reserve(client, user, str(promo["id"]))).json()
        bought = await client.post(
            f"/api/v1/reservations/{held['id']}/purchase", headers=user.headers
        )
        assert bought.status_code == 200
    assert_problem(await reserve(client, user, str(promo["id"])), 409, "purchase-limit-reached")


async def test_not_eligible_without_location(
    client: httpx.AsyncClient, admin: ApiUser, user: ApiUser
) -> None:
    promo = await create_promo(client, admin)
    body = assert_problem(await reserve(client, user, str(promo["id"])), 403, "not-eligible")
    assert body["instance"] == f"/api/v1/promos/{promo['id']}/reserve"


async def test_idempotency_key_replays_reserve_and_purchase(
    client: httpx.AsyncClient, admin: ApiUser, user: ApiUser
) -> None:
    promo = await _near_promo(client, admin, user, quantity=3)
    key = {"Idempotency-Key": "reserve-1", **user.headers}
    first = await client.post(f"/api/v1/promos/{promo['id']}/reserve", headers=key)
    replay = await client.post(f"/api/v1/promos/{promo['id']}/reserve", headers=key)
    assert first.status_code == replay.status_code == 201
    assert replay.json() == first.json()
    assert replay.headers.get("Idempotent-Replayed") == "true"
    url = f"/api/v1/reservations/{first.json()['id']}/purchase"
    pkey = {"Idempotency-Key": "buy-1", **user.headers}
    bought = await client.post(url, headers=pkey)
    assert (await client.post(url, headers=pkey)).json() == bought.json()
    reused = await client.post(url, headers=pkey, content=b'{"other": 1}')
    assert_problem(reused, 422, "idempotency-key-reused")
    stats = await _stats(client, admin, str(promo["id"]))
    assert (stats["sold"], stats["reservations"]) == (1, 1)


async def test_me_reservations_paginates_newest_first(
    client: httpx.AsyncClient, admin: ApiUser, user: ApiUser
) -> None:
    ids = []
    for _ in range(3):
        promo = await _near_promo(client, admin, user)
        ids.append((await reserve(client, user, str(promo["id"]))).json()["id"])
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": "2", **({"cursor": cursor} if cursor else {})}
        page = (
            await client.get("/api/v1/me/reservations", params=params, headers=user.headers)
        ).json()
        seen += [r["id"] for r in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert sorted(seen) == sorted(ids)
    bad = await client.get("/api/v1/me/reservations?cursor=zzz", headers=user.headers)
    assert_problem(bad, 422, "validation-error")


async def test_quantity_cannot_drop_below_reserved_units(
    client: httpx.AsyncClient, admin: ApiUser, user: ApiUser
) -> None:
    promo = await _near_promo(client, admin, user, quantity=3)
    held = (await reserve(client, user, str(promo["id"]))).json()
    url = f"/api/v1/promos/{promo['id']}"
    await client.post(f"/api/v1/reservations/{held['id']}/purchase", headers=user.headers)
    # unit 1 is sold; units 2 and 3 were never reserved
    assert_problem(
        await client.patch(url, json={"quantity": 0}, headers=admin.headers),
        422,
        "validation-error",
    )
    shrunk = await client.patch(url, json={"quantity": 1}, headers=admin.headers)
    assert shrunk.status_code == 200, shrunk.text
    assert shrunk.json()["status"] == "sold_out"
    grown = await client.patch(url, json={"quantity": 2}, headers=admin.headers)
    assert grown.json()["status"] == "running"
    second = await reserve(client, user, str(promo["id"]))
    assert_problem(second, 409, "purchase-limit-reached")
    assert_problem(await client.delete(url, headers=admin.headers), 409, "conflict")


async def test_quantity_drop_over_a_held_unit_is_409(
    client: httpx.AsyncClient, admin: ApiUser, make_user: MakeUser
) -> None:
    first, second = await make_user(), await make_user()
    promo = await _near_promo(client, admin, first, second, quantity=2)
    await reserve(client, first, str(promo["id"]))
    await reserve(client, second, str(promo["id"]))
    resp = await client.patch(
        f"/api/v1/promos/{promo['id']}", json={"quantity": 1}, headers=admin.headers
    )
    assert_problem(resp, 409, "conflict")
