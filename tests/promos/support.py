"""Helpers for the promos tests: places at known distances, and a store+product+promo."""

from __future__ import annotations

import math
import random
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from fastapi import FastAPI
from sqlalchemy import text

from app.core.security import Role
from tests.helpers import ApiUser

EARTH_RADIUS_M = 6378168.0  # the sphere earthdistance's earth() uses


def random_point() -> tuple[float, float]:
    """Somewhere far from every other test's promos (tests share committed data)."""
    return random.uniform(-60, 60), random.uniform(-170, 170)


def north_of(lat: float, lng: float, metres: float) -> tuple[float, float]:
    """The point `metres` due north along the meridian (exact on earthdistance's sphere)."""
    return lat + math.degrees(metres / EARTH_RADIUS_M), lng


def iso(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat()


def window(start_min: float = -5, end_min: float = 60) -> dict[str, str]:
    now = datetime.now(UTC)
    return {
        "starts_at": iso(now + timedelta(minutes=start_min)),
        "ends_at": iso(now + timedelta(minutes=end_min)),
    }


async def create_store(
    client: httpx.AsyncClient, admin: ApiUser, lat: float, lng: float, name: str = "Store"
) -> dict[str, Any]:
    resp = await client.post(
        "/api/v1/stores", json={"name": name, "lat": lat, "lng": lng}, headers=admin.headers
    )
    assert resp.status_code == 201, resp.text
    body: dict[str, Any] = resp.json()
    return body


async def create_product(
    client: httpx.AsyncClient, admin: ApiUser, store_id: str, price_cents: int = 500
) -> dict[str, Any]:
    resp = await client.post(
        "/api/v1/products",
        json={"store_id": store_id, "name": "Croissant", "price_cents": price_cents},
        headers=admin.headers,
    )
    assert resp.status_code == 201, resp.text
    body: dict[str, Any] = resp.json()
    return body


async def create_promo(
    client: httpx.AsyncClient,
    admin: ApiUser,
    *,
    at: tuple[float, float] | None = None,
    product_id: str | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """A promo running now (unless `fields` say otherwise) at a fresh store at `at`."""
    if product_id is None:
        lat, lng = at or random_point()
        store = await create_store(client, admin, lat, lng)
        product_id = (await create_product(client, admin, store["id"]))["id"]
    body = {
        "product_id": product_id,
        "title": "Flash deal",
        "promo_price_cents": 100,
        "quantity": 1,
        **window(),
        **fields,
    }
    resp = await client.post("/api/v1/promos", json=body, headers=admin.headers)
    assert resp.status_code == 201, resp.text
    promo: dict[str, Any] = resp.json()
    return promo


async def place(client: httpx.AsyncClient, user: ApiUser, lat: float, lng: float) -> None:
    resp = await client.put(
        "/api/v1/me/location", json={"lat": lat, "lng": lng}, headers=user.headers
    )
    assert resp.status_code == 200, resp.text


async def reserve(client: httpx.AsyncClient, user: ApiUser, promo_id: str) -> httpx.Response:
    return await client.post(f"/api/v1/promos/{promo_id}/reserve", headers=user.headers)


def uid() -> str:
    return str(uuid.uuid4())


async def placed_users(app: FastAPI, n: int, lat: float, lng: float) -> list[ApiUser]:
    """`n` committed users placed at (lat, lng), in one statement, with tokens."""
    async with app.state.db.engine.begin() as conn:
        rows = (
            await conn.execute(
                text(
                    "INSERT INTO users (email, role, lat, lng, location_updated_at)"
                    " SELECT 'placed-' || gen_random_uuid() || '@example.com', 'user', :lat, :lng,"
                    " now() FROM generate_series(1, :n) RETURNING id, email"
                ),
                {"n": n, "lat": lat, "lng": lng},
            )
        ).all()
    tokens = app.state.tokens
    return [ApiUser(i, e, Role.user, tokens.issue(i, Role.user)) for i, e in rows]
