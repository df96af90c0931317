"""`GET /promos/{id}/report`: units reserved and sold, notifications sent and read, per
bucket."""

from __future__ import annotations

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from tests.conftest import MakeUser
from tests.helpers import ApiUser, assert_problem
from tests.promos.support import create_promo, place, random_point, reserve


async def test_counts_reservations_sales_and_notifications(
    client: httpx.AsyncClient, admin: ApiUser, make_user: MakeUser, conn: AsyncConnection
) -> None:
    lat, lng = random_point()
    promo = await create_promo(client, admin, at=(lat, lng), quantity=5)
    buyers = [await make_user() for _ in range(3)]
    for buyer in buyers:
        await place(client, buyer, lat, lng)
    held = [await reserve(client, b, str(promo["id"])) for b in buyers]
    assert all(r.status_code == 201 for r in held), [r.text for r in held]
    for buyer, r in zip(buyers[:2], held[:2], strict=True):
        bought = await client.post(
            f"/api/v1/reservations/{r.json()['id']}/purchase", headers=buyer.headers
        )
        assert bought.status_code == 200, bought.text
    await conn.execute(
        text(
            "INSERT INTO notifications (user_id, promo_id, day, status, read_at)"
            " VALUES (:a, :p, current_date, 'read', now()), (:b, :p, current_date, 'unread', NULL)"
        ),
        {"a": buyers[0].id, "b": buyers[1].id, "p": promo["id"]},
    )

    resp = await client.get(
        f"/api/v1/promos/{promo['id']}/report", params={"bucket": "hour"}, headers=admin.headers
    )
    assert resp.status_code == 200, resp.text
    points = resp.json()["points"]
    assert len(points) in (48, 49)
    totals = {k: sum(p[k] for p in points) for k in ("reserved", "purchased", "notified", "read")}
    assert totals == {"reserved": 3, "purchased": 2, "notified": 2, "read": 1}
    assert sum(1 for p in points if any(p[k] for k in totals)) in (1, 2)  # all just now


async def test_report_errors(client: httpx.AsyncClient, admin: ApiUser, user: ApiUser) -> None:
    lat, lng = random_point()
    promo = await create_promo(client, admin, at=(lat, lng))
    url = f"/api/v1/promos/{promo['id']}/report"
    assert_problem(await client.get(url, headers=user.headers), 403, "forbidden")
    assert_problem(
        await client.get(url, params={"bucket": "minute"}, headers=admin.headers),
        422,
        "validation-error",
    )
    missing = "/api/v1/promos/00000000-0000-0000-0000-000000000000/report"
    assert_problem(await client.get(missing, headers=admin.headers), 404, "not-found")
