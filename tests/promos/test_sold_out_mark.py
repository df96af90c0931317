"""`promos.sold_out`: the worker marks a promo whose every unit is sold, so the listings' index
leaves it out; a larger quantity clears the mark. The mark changes no answer."""

from __future__ import annotations

import uuid

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from app.check import CHECKS, run_checks, violations
from app.promos import soldout
from tests.helpers import ApiUser
from tests.promos.support import create_promo, place, random_point, reserve

_MARK_CHECK = tuple(c for c in CHECKS if c.name == "promo_sold_out_mark")


async def _marked(conn: AsyncConnection, promo_id: str) -> bool:
    value: bool = (
        await conn.execute(text("SELECT sold_out FROM promos WHERE id = :p"), {"p": promo_id})
    ).scalar_one()
    return value


async def _running_ids(client: httpx.AsyncClient, user: ApiUser) -> set[str]:
    ids: set[str] = set()
    cursor = None
    while True:
        params = {"limit": "200", **({"cursor": cursor} if cursor else {})}
        page = (
            await client.get("/api/v1/promos/running", params=params, headers=user.headers)
        ).json()
        ids |= {p["id"] for p in page["items"]}
        cursor = page["next_cursor"]
        if not cursor:
            return ids


async def test_sold_out_promo_is_marked_and_a_larger_quantity_unmarks_it(
    client: httpx.AsyncClient, admin: ApiUser, user: ApiUser, conn: AsyncConnection
) -> None:
    lat, lng = random_point()
    promo = await create_promo(client, admin, at=(lat, lng), quantity=1)
    other = await create_promo(client, admin, at=(lat, lng), quantity=5)
    await place(client, user, lat, lng)
    held = await reserve(client, user, promo["id"])
    assert held.status_code == 201, held.text
    bought = await client.post(
        f"/api/v1/reservations/{held.json()['id']}/purchase", headers=user.headers
    )
    assert bought.status_code == 200, bought.text
    assert promo["id"] not in await _running_ids(client, user)  # rules.RUNNING, as before

    raw = (await conn.get_raw_connection()).driver_connection
    assert await soldout.mark_sold_out(raw, 1000) >= 1
    assert await _marked(conn, promo["id"]) and not await _marked(conn, other["id"])
    assert not violations(await run_checks(raw, _MARK_CHECK))
    running = await _running_ids(client, user)
    assert promo["id"] not in running and other["id"] in running

    patched = await client.patch(
        f"/api/v1/promos/{promo['id']}", json={"quantity": 2}, headers=admin.headers
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["status"] == "running"
    assert not await _marked(conn, promo["id"])
    assert promo["id"] in await _running_ids(client, user)
    await soldout.mark_sold_out(raw, 1000)
    assert not await _marked(conn, promo["id"])  # 1 of 2 sold


async def test_check_reports_a_mark_on_a_promo_with_units_left(
    client: httpx.AsyncClient, admin: ApiUser, conn: AsyncConnection
) -> None:
    promo = await create_promo(client, admin, quantity=3)
    await conn.execute(text("UPDATE promos SET sold_out = true WHERE id = :p"), {"p": promo["id"]})
    raw = (await conn.get_raw_connection()).driver_connection
    bad = violations(await run_checks(raw, _MARK_CHECK))
    assert [row["id"] for o in bad for row in o.rows] == [uuid.UUID(promo["id"])]
