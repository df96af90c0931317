"""Coalesced reserves (app/core/coalesce.py, `promo_reserve_batch`): a crowd on one promo is
served in batches, one transaction each, and every request gets the answer it would have got
alone: one hold per user however often they ask at once, sold-out exactly past the last
unit, the ineligible refused beside the eligible, a cancel that lands mid-crowd, invariants
after. With `COALESCE_HOT_PATHS=false` the same tests run on the per-request path (the
batch-size check is then skipped)."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter

import httpx
from fastapi import FastAPI
from sqlalchemy import text

from app.core.security import Role
from tests.conftest import MakeUser
from tests.helpers import assert_coalesced, assert_invariants, coalesced_batches
from tests.promos.support import create_promo, north_of, placed_users, random_point, reserve


def _slug(response: httpx.Response) -> str:
    if response.status_code in (200, 201):
        return str(response.status_code)
    return str(response.json()["type"]).rsplit("/", 1)[-1]


async def _held(app: FastAPI, promo_id: str) -> dict[str, str]:
    """Each user's held reservation of the promo, with its unit pointing at it."""
    async with app.state.db.engine.connect() as conn:
        rows = (
            await conn.execute(
                text(
                    "SELECT r.user_id::text, r.id::text FROM reservations r"
                    " JOIN promo_units u ON u.id = r.unit_id AND u.reservation_id = r.id"
                    " WHERE r.promo_id = :p AND r.status = 'held' AND u.state = 'held'"
                ),
                {"p": promo_id},
            )
        ).all()
    return dict(rows)


async def test_a_herd_on_a_small_promo_gets_exactly_its_units_in_batches(
    app: FastAPI, live_client: httpx.AsyncClient, make_live_user: MakeUser
) -> None:
    admin = await make_live_user(Role.admin)
    lat, lng = random_point()
    promo = await create_promo(live_client, admin, at=(lat, lng), quantity=100, max_per_user=1)
    users = await placed_users(app, 300, lat, lng)
    before = coalesced_batches("reserve")
    answers = await asyncio.gather(*[reserve(live_client, u, promo["id"]) for u in users])
    assert Counter(_slug(a) for a in answers) == {"201": 100, "sold-out": 200}
    winners = {
        str(u.id): a.json()["id"]
        for u, a in zip(users, answers, strict=True)
        if a.status_code == 201
    }
    for a in answers:
        if a.status_code == 201:
            assert a.headers["Location"] == f"/api/v1/reservations/{a.json()['id']}"
    assert await _held(app, promo["id"]) == winners
    await assert_invariants(app)
    if app.state.settings.coalesce_hot_paths:
        assert_coalesced("reserve", before, len(users))


async def test_a_user_asking_at_once_many_times_gets_one_hold_back_each_time(
    app: FastAPI, live_client: httpx.AsyncClient, make_live_user: MakeUser
) -> None:
    admin = await make_live_user(Role.admin)
    lat, lng = random_point()
    promo = await create_promo(live_client, admin, at=(lat, lng), quantity=50, max_per_user=2)
    users = await placed_users(app, 20, lat, lng)
    calls = [u for u in users for _ in range(4)]
    answers = await asyncio.gather(*[reserve(live_client, u, promo["id"]) for u in calls])
    per_user: dict[str, list[httpx.Response]] = {}
    for u, a in zip(calls, answers, strict=True):
        per_user.setdefault(str(u.id), []).append(a)
    held = await _held(app, promo["id"])
    for user_id, mine in per_user.items():
        # One new hold; every other call answers that same live hold again (200).
        assert sorted(a.status_code for a in mine) == [200, 200, 200, 201], user_id
        assert {a.json()["id"] for a in mine} == {held[user_id]}
    await assert_invariants(app)


async def test_the_ineligible_are_refused_beside_the_eligible_and_a_missing_promo_is_404(
    app: FastAPI, live_client: httpx.AsyncClient, make_live_user: MakeUser
) -> None:
    admin = await make_live_user(Role.admin)
    lat, lng = random_point()
    promo = await create_promo(
        live_client, admin, at=(lat, lng), quantity=100, max_per_user=1, radius_m=1000
    )
    near = await placed_users(app, 30, lat, lng)
    far = await placed_users(app, 30, *north_of(lat, lng, 5000))
    answers = await asyncio.gather(*[reserve(live_client, u, promo["id"]) for u in near + far])
    assert [_slug(a) for a in answers] == ["201"] * 30 + ["not-eligible"] * 30
    missing = str(uuid.uuid4())
    gone = await asyncio.gather(*[reserve(live_client, u, missing) for u in near[:10]])
    assert {a.status_code for a in gone} == {404}
    await assert_invariants(app)


async def test_a_cancel_mid_crowd_answers_promo_not_running_and_loses_nothing(
    app: FastAPI, live_client: httpx.AsyncClient, make_live_user: MakeUser
) -> None:
    admin = await make_live_user(Role.admin)
    lat, lng = random_point()
    promo = await create_promo(live_client, admin, at=(lat, lng), quantity=500, max_per_user=1)
    users = await placed_users(app, 200, lat, lng)
    first = [asyncio.ensure_future(reserve(live_client, u, promo["id"])) for u in users[:100]]
    cancel = asyncio.ensure_future(
        live_client.post(f"/api/v1/promos/{promo['id']}/cancel", headers=admin.headers)
    )
    second = [asyncio.ensure_future(reserve(live_client, u, promo["id"])) for u in users[100:]]
    answers = await asyncio.gather(*first, *second)
    assert (await cancel).status_code == 200
    slugs = Counter(_slug(a) for a in answers)
    assert set(slugs) <= {"201", "promo-not-running"}, slugs
    assert _slug(await reserve(live_client, users[0], promo["id"])) == "promo-not-running"
    winners = {
        str(u.id): a.json()["id"]
        for u, a in zip(users, answers, strict=True)
        if a.status_code == 201
    }
    assert await _held(app, promo["id"]) == winners
    await assert_invariants(app)


async def test_callers_with_lapsed_holds_in_a_crowd_get_new_ones_and_nothing_leaks(
    app: FastAPI, live_client: httpx.AsyncClient, make_live_user: MakeUser
) -> None:
    admin = await make_live_user(Role.admin)
    lat, lng = random_point()
    promo = await create_promo(live_client, admin, at=(lat, lng), quantity=60, max_per_user=2)
    users = await placed_users(app, 50, lat, lng)
    first = await asyncio.gather(*[reserve(live_client, u, promo["id"]) for u in users[:20]])
    assert {a.status_code for a in first} == {201}
    async with app.state.db.engine.begin() as conn:  # their holds lapse
        await conn.execute(
            text(
                "UPDATE reservations SET expires_at = now() - interval '1 second'"
                " WHERE promo_id = :p"
            ),
            {"p": promo["id"]},
        )
    answers = await asyncio.gather(*[reserve(live_client, u, promo["id"]) for u in users])
    # 20 lapsed holds give back or pass on their units: 60 units serve all 50 callers.
    assert Counter(_slug(a) for a in answers) == {"201": 50}
    old = {a.json()["id"] for a in first}
    assert not old & {a.json()["id"] for a in answers}
    held = await _held(app, promo["id"])
    assert held == {str(u.id): a.json()["id"] for u, a in zip(users, answers, strict=True)}
    await assert_invariants(app)
