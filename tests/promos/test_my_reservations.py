"""`GET /me/reservations` names what was reserved: the promo, its price, product and store,
and when it was bought."""

from __future__ import annotations

from datetime import datetime

import httpx

from tests.helpers import ApiUser
from tests.promos.support import create_promo, place, random_point, reserve


async def test_reservations_carry_their_promo_and_purchase_time(
    client: httpx.AsyncClient, admin: ApiUser, user: ApiUser
) -> None:
    lat, lng = random_point()
    promo = await create_promo(client, admin, at=(lat, lng), title="Two croissants", quantity=2)
    await place(client, user, lat, lng)
    held = await reserve(client, user, str(promo["id"]))
    assert held.status_code == 201, held.text

    [mine] = (await client.get("/api/v1/me/reservations", headers=user.headers)).json()["items"]
    assert mine["status"] == "held" and mine["purchased_at"] is None
    assert mine["promo_title"] == "Two croissants"
    assert mine["promo_price_cents"] == 100 and mine["price_cents"] == 500
    assert mine["currency"] == "EUR"
    assert mine["product_name"] == "Croissant" and mine["store_name"] == "Store"

    bought = await client.post(
        f"/api/v1/reservations/{held.json()['id']}/purchase", headers=user.headers
    )
    assert bought.status_code == 200, bought.text
    [mine] = (await client.get("/api/v1/me/reservations", headers=user.headers)).json()["items"]
    assert mine["status"] == "purchased"
    # Bought while the hold was live.
    assert datetime.fromisoformat(mine["purchased_at"]) <= datetime.fromisoformat(
        mine["expires_at"]
    )
