"""API6:2023 Unrestricted access to sensitive business flows: a user scripting reservations
cannot hoard more than `max_per_user` units, one user hammering coupon assignment gets no
more than the book allows, and the token and assignment flows are rate limited per client."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from app.core.security import Role
from app.core.settings import Settings
from app.main import create_app
from tests.books.flows import book_with_codes
from tests.conftest import MakeUser
from tests.helpers import ApiUser, assert_problem, started
from tests.promos.support import create_promo, place, random_point, reserve
from tests.security.support import API


async def test_scripted_reserve_and_purchase_stops_at_max_per_user(
    client: httpx.AsyncClient, conn: AsyncConnection, admin: ApiUser, user: ApiUser
) -> None:
    lat, lng = random_point()
    promo = await create_promo(client, admin, at=(lat, lng), quantity=10, max_per_user=2)
    await place(client, user, lat, lng)
    outcomes: Counter[str] = Counter()
    for _ in range(8):
        held = await reserve(client, user, str(promo["id"]))
        if held.status_code == 409:
            assert_problem(held, 409, "purchase-limit-reached")
            outcomes["refused"] += 1
            continue
        assert held.status_code == 201, held.text
        bought = await client.post(
            f"{API}/reservations/{held.json()['id']}/purchase", headers=user.headers
        )
        assert bought.status_code == 200, bought.text
        outcomes["bought"] += 1
    assert outcomes == {"bought": 2, "refused": 6}
    rows = (
        await conn.execute(
            text(
                "SELECT status, count(*) FROM reservations WHERE promo_id = :p AND user_id = :u"
                " GROUP BY status"
            ),
            {"p": promo["id"], "u": user.id},
        )
    ).all()
    assert dict(rows) == {"purchased": 2}


async def test_cancel_and_reserve_again_never_holds_more_than_allowed(
    client: httpx.AsyncClient, conn: AsyncConnection, admin: ApiUser, user: ApiUser
) -> None:
    lat, lng = random_point()
    promo = await create_promo(client, admin, at=(lat, lng), quantity=10, max_per_user=1)
    await place(client, user, lat, lng)
    for _ in range(5):
        held = await reserve(client, user, str(promo["id"]))
        assert held.status_code == 201, held.text
        again = await reserve(client, user, str(promo["id"]))
        assert again.status_code == 200 and again.json()["id"] == held.json()["id"]
        live = (
            await conn.execute(
                text(
                    "SELECT count(*) FROM reservations WHERE promo_id = :p AND user_id = :u"
                    " AND status = 'held'"
                ),
                {"p": promo["id"], "u": user.id},
            )
        ).scalar_one()
        assert live == 1
        cancelled = await client.post(
            f"{API}/reservations/{held.json()['id']}/cancel", headers=user.headers
        )
        assert cancelled.status_code == 200, cancelled.text
    free = (
        await conn.execute(
            text("SELECT count(*) FROM promo_units WHERE promo_id = :p AND state = 'free'"),
            {"p": promo["id"]},
        )
    ).scalar_one()
    assert free == 10


async def test_concurrent_hoarding_by_one_user_is_bounded(
    app: FastAPI, live_client: httpx.AsyncClient, make_live_user: MakeUser
) -> None:
    admin = await make_live_user(Role.admin)
    hoarder = await make_live_user(Role.user)
    lat, lng = random_point()
    promo = await create_promo(live_client, admin, at=(lat, lng), quantity=20, max_per_user=2)
    await place(live_client, hoarder, lat, lng)
    promo_id = str(promo["id"])

    statuses: Counter[int] = Counter()
    for _ in range(3):
        wave = await asyncio.gather(*(reserve(live_client, hoarder, promo_id) for _ in range(15)))
        statuses.update(r.status_code for r in wave)
        assert all(r.status_code in (200, 201, 409) for r in wave), [r.text for r in wave]
        ids = {r.json()["id"] for r in wave if r.status_code in (200, 201)}
        assert len(ids) <= 1  # one live hold at a time
        bought = await asyncio.gather(
            *(
                live_client.post(f"{API}/reservations/{i}/purchase", headers=hoarder.headers)
                for i in ids
                for _ in range(5)
            )
        )
        assert all(b.status_code in (200, 409) for b in bought), [b.text for b in bought]
    assert statuses[201] == 2

    async with app.state.db.engine.connect() as conn:
        rows = (
            await conn.execute(
                text(
                    "SELECT status, count(*) FROM reservations WHERE promo_id = :p"
                    " AND user_id = :u GROUP BY status"
                ),
                {"p": promo_id, "u": hoarder.id},
            )
        ).all()
        sold = (
            await conn.execute(
                text("SELECT count(*) FROM promo_units WHERE promo_id = :p AND state = 'sold'"),
                {"p": promo_id},
            )
        ).scalar_one()
    assert dict(rows) == {"purchased": 2}
    assert sold == 2


async def test_scripted_coupon_assignment_stops_at_the_book_limit(
    live_client: httpx.AsyncClient, app: FastAPI, make_live_user: MakeUser
) -> None:
    admin = await make_live_user(Role.admin)
    hoarder = await make_live_user(Role.user)
    book, _ = await book_with_codes(live_client, admin, n=20, max_codes_per_user=2)
    url = f"{API}/books/{book['id']}/assign"
    results = await asyncio.gather(
        *(live_client.post(url, json={}, headers=hoarder.headers) for _ in range(20))
    )
    codes = Counter(r.status_code for r in results)
    assert codes[201] == 2, [r.text for r in results]
    assert set(codes) <= {201, 409}
    async with app.state.db.engine.connect() as conn:
        held = (
            await conn.execute(
                text("SELECT count(*) FROM codes WHERE book_id = :b AND user_id = :u"),
                {"b": book["id"], "u": hoarder.id},
            )
        ).scalar_one()
    assert held == 2


@pytest.fixture
async def limited_client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """A second app with the rate limits on (the test app runs with them off), and the
    guessing lockout off."""
    limited = create_app(
        settings.model_copy(
            update={
                "rate_limit_enabled": True,
                "rate_limit_auth": "3/minute",
                "rate_limit_assign": "3/minute",
                # The guessing lockout (tests/security/test_lockout.py) counts failures in
                # the shared database: off here, so only the per-process limit answers.
                "lockout_max_failures": 0,
            }
        )
    )
    async with started(limited) as served:
        transport = httpx.ASGITransport(app=served.asgi, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            yield c


async def test_fourth_token_request_from_one_ip_is_rate_limited(
    limited_client: httpx.AsyncClient,
) -> None:
    form = {"username": f"nobody-{uuid.uuid4().hex[:8]}@example.com", "password": "guess-123"}
    for _ in range(3):
        assert_problem(
            await limited_client.post(f"{API}/auth/token", data=form), 401, "unauthenticated"
        )
    limited = await limited_client.post(f"{API}/auth/token", data=form)
    assert_problem(limited, 429, "rate-limited")
    assert 1 <= int(limited.headers["retry-after"]) <= 60
    # another account from the same address is limited too: the key is the client, not the user
    other = {**form, "username": f"other-{uuid.uuid4().hex[:8]}@example.com"}
    assert_problem(await limited_client.post(f"{API}/auth/token", data=other), 429, "rate-limited")


async def test_forwarded_for_header_does_not_reset_the_limit(
    limited_client: httpx.AsyncClient,
) -> None:
    form = {"username": f"nobody-{uuid.uuid4().hex[:8]}@example.com", "password": "guess-123"}
    for i in range(3):
        await limited_client.post(
            f"{API}/auth/token", data=form, headers={"X-Forwarded-For": f"10.0.0.{i}"}
        )
    spoofed = await limited_client.post(
        f"{API}/auth/token", data=form, headers={"X-Forwarded-For": "10.9.9.9"}
    )
    assert_problem(spoofed, 429, "rate-limited")


async def test_fourth_reserve_by_one_user_is_rate_limited(
    limited_client: httpx.AsyncClient, make_live_user: MakeUser
) -> None:
    hoarder = await make_live_user(Role.user)
    for _ in range(3):
        resp = await limited_client.post(
            f"{API}/promos/{uuid.uuid4()}/reserve", headers=hoarder.headers
        )
        assert_problem(resp, 404, "not-found")
    limited = await limited_client.post(
        f"{API}/promos/{uuid.uuid4()}/reserve", headers=hoarder.headers
    )
    assert_problem(limited, 429, "rate-limited")
    assert int(limited.headers["retry-after"]) >= 1
