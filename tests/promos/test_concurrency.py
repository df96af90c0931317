"""Many real connections at once (committed, over the pool): units are never oversold,
lapsed holds come back, and per-user limits hold. Invariants are checked in the database."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text

from app.check import CHECKS, run_checks, violations
from app.core.security import Role
from tests.conftest import MakeUser
from tests.helpers import ApiUser, wait_for, wait_for_lock_waiters
from tests.promos.support import create_promo, placed_users, random_point, reserve


async def _sql(app: FastAPI, sql: str, **params: Any) -> list[Any]:
    async with app.state.db.engine.begin() as conn:
        result = await conn.execute(text(sql), params)
        return list(result.all()) if result.returns_rows else []


_PROMO_TABLES = {"promos", "promo_units", "reservations"}


async def _assert_checker_agrees(app: FastAPI) -> None:
    """The service-wide invariant checker's promo checks (and lock hygiene) find nothing."""
    checks = tuple(c for c in CHECKS if not c.tables or _PROMO_TABLES & set(c.tables))
    async with app.state.db.engine.connect() as conn:
        raw = await conn.get_raw_connection()
        bad = violations(await run_checks(raw.driver_connection, checks))
    assert not bad, "\n".join(f"{o.check.name}: {o.rows}" for o in bad)


async def _assert_invariants(app: FastAPI, promo_id: str) -> dict[str, int]:
    """Sold ≤ quantity; every sold unit has exactly one purchased reservation and vice versa;
    every held unit points at a reservation of that unit; one live hold per user."""
    checks = await _sql(
        app,
        """
        SELECT p.quantity,
          (SELECT coalesce(sum(s.sold), 0) FROM promo_sales s WHERE s.promo_id = p.id),
          (SELECT count(*) FROM promo_units u WHERE u.promo_id = p.id AND u.state = 'sold'),
          (SELECT count(*) FROM promo_units u WHERE u.promo_id = p.id AND u.state = 'sold'
             AND (SELECT count(*) FROM reservations r
                  WHERE r.unit_id = u.id AND r.status = 'purchased') <> 1),
          (SELECT count(*) FROM reservations r JOIN promo_units u ON u.id = r.unit_id
             WHERE r.promo_id = p.id AND r.status = 'purchased'
               AND (u.state <> 'sold' OR u.reservation_id <> r.id)),
          (SELECT count(*) FROM promo_units u LEFT JOIN reservations r ON r.id = u.reservation_id
             WHERE u.promo_id = p.id AND u.state = 'held'
               AND (r.id IS NULL OR r.unit_id <> u.id OR r.status <> 'held')),
          (SELECT count(*) FROM reservations r WHERE r.promo_id = p.id AND r.status = 'held'
             AND r.expires_at > now()
             AND NOT EXISTS (SELECT 1 FROM promo_units u
                             WHERE u.id = r.unit_id AND u.reservation_id = r.id
                               AND u.state = 'held')),
          (SELECT count(*) FROM (SELECT user_id FROM reservations r
             WHERE r.promo_id = p.id AND r.status = 'held' AND r.expires_at > now()
             GROUP BY user_id HAVING count(*) > 1) x),
          (SELECT count(*) FROM reservations r WHERE r.promo_id = p.id
             AND r.status = 'held' AND r.expires_at > now())
        FROM promos p WHERE p.id = :id
        """,
        id=promo_id,
    )
    quantity, sold, sold_units, bad_sold, bad_purchased, bad_held, orphan_live, doubles, live = (
        checks[0]
    )
    assert sold == sold_units <= quantity
    assert (bad_sold, bad_purchased, bad_held, orphan_live, doubles) == (0, 0, 0, 0, 0)
    await _assert_checker_agrees(app)
    return {"sold": sold, "live": live}


# A reserve (`promo_reserve`) pausing between two runs of its claim: the last one met only
# units that other sessions were claiming, and claimable units are left.
_CLAIM_PAUSES = """
SELECT pid FROM pg_stat_activity
WHERE datname = current_database() AND pid <> pg_backend_pid()
  AND query LIKE '%promo_reserve%' AND wait_event = 'PgSleep'
"""


async def _wait_for_claim_retry(pg: asyncpg.Connection) -> int:
    """Wait until a reserve pauses to run its claim again; returns its pid."""
    pid: int = await wait_for(
        lambda: pg.fetchval(_CLAIM_PAUSES), every=0.005, what="a reserve retrying its claim"
    )
    return pid


@pytest.fixture
async def live_admin(make_live_user: MakeUser) -> ApiUser:
    return await make_live_user(Role.admin)


async def test_a_unit_locked_by_an_unfinished_claim_is_not_sold_out(
    app: FastAPI, live_client: httpx.AsyncClient, live_admin: ApiUser, pg: asyncpg.Connection
) -> None:
    """The only unit is locked by a claim that then rolls back: a reserve meanwhile must not
    answer `sold-out` (the unit was never taken); it retries and gets the unit."""
    lat, lng = random_point()
    promo = await create_promo(live_client, live_admin, at=(lat, lng), quantity=1)
    [user] = await placed_users(app, 1, lat, lng)
    async with app.state.db.engine.connect() as conn:
        claim = await conn.begin()
        await conn.execute(
            text("SELECT id FROM promo_units WHERE promo_id = :id FOR UPDATE"),
            {"id": promo["id"]},
        )
        pending = asyncio.create_task(reserve(live_client, user, promo["id"]))
        # The reserve skips the locked unit (SKIP LOCKED) instead of waiting for it: once it
        # pauses between claims, it met the lock and is retrying rather than answering.
        await _wait_for_claim_retry(pg)
        assert not pending.done(), pending.result().text
        await claim.rollback()
    answer = await pending
    assert answer.status_code == 201, answer.text
    assert (await _assert_invariants(app, promo["id"]))["live"] == 1


async def test_300_users_race_for_10_units(
    app: FastAPI, live_client: httpx.AsyncClient, live_admin: ApiUser
) -> None:
    lat, lng = random_point()
    promo = await create_promo(live_client, live_admin, at=(lat, lng), quantity=10)
    users = await placed_users(app, 300, lat, lng)
    responses = await asyncio.gather(*(reserve(live_client, u, promo["id"]) for u in users))
    statuses = Counter(r.status_code for r in responses)
    assert statuses == {201: 10, 409: 290}, statuses
    assert {r.json()["type"] for r in responses if r.status_code == 409} == {"/problems/sold-out"}
    assert (await _assert_invariants(app, promo["id"]))["live"] == 10
    held = await _sql(
        app,
        "SELECT count(*) FROM promo_units WHERE promo_id = :id AND state = 'held'",
        id=promo["id"],
    )
    assert held[0][0] == 10

    winners = [
        (u, r.json()["id"]) for u, r in zip(users, responses, strict=True) if r.status_code == 201
    ]
    bought = await asyncio.gather(
        *(
            live_client.post(f"/api/v1/reservations/{rid}/purchase", headers=u.headers)
            for u, rid in winners
        )
    )
    assert [b.status_code for b in bought] == [200] * 10
    assert (await _assert_invariants(app, promo["id"]))["sold"] == 10
    got = await live_client.get(f"/api/v1/promos/{promo['id']}", headers=live_admin.headers)
    assert got.json()["status"] == "sold_out" and got.json()["sold_out_at"] is not None
    running = await live_client.get("/api/v1/promos/running?limit=500", headers=users[0].headers)
    assert promo["id"] not in {p["id"] for p in running.json()["items"]}
    late = await reserve(live_client, users[-1], promo["id"])
    assert late.status_code == 409 and late.json()["type"] == "/problems/sold-out"


async def test_purchase_waits_for_a_promo_cancel_in_flight(
    app: FastAPI, live_client: httpx.AsyncClient, live_admin: ApiUser, pg: asyncpg.Connection
) -> None:
    """A purchase that meets an uncommitted cancel waits for it and then refuses: nothing is
    sold after a cancel has committed, whatever the purchase's snapshot saw."""
    lat, lng = random_point()
    promo = await create_promo(live_client, live_admin, at=(lat, lng), quantity=2)
    [user] = await placed_users(app, 1, lat, lng)
    rid = (await reserve(live_client, user, promo["id"])).json()["id"]
    async with app.state.db.engine.connect() as conn:
        cancel = await conn.begin()
        await conn.execute(
            text("UPDATE promos SET cancelled_at = now() WHERE id = :id"), {"id": promo["id"]}
        )
        canceller = (await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one()
        pending = asyncio.create_task(
            live_client.post(f"/api/v1/reservations/{rid}/purchase", headers=user.headers)
        )
        await wait_for_lock_waiters(pg, blocked_by=[canceller])
        assert not pending.done(), pending.result().text
        await cancel.commit()
    answer = await pending
    assert answer.status_code == 409 and answer.json()["type"] == "/problems/promo-not-running"
    counts = await _assert_invariants(app, promo["id"])
    assert (counts["sold"], counts["live"]) == (0, 1)


async def test_lapsed_holds_return_their_units_under_load(
    app: FastAPI, live_client: httpx.AsyncClient, live_admin: ApiUser
) -> None:
    lat, lng = random_point()
    promo = await create_promo(live_client, live_admin, at=(lat, lng), quantity=10)
    first = await placed_users(app, 10, lat, lng)
    held = await asyncio.gather(*(reserve(live_client, u, promo["id"]) for u in first))
    assert [r.status_code for r in held] == [201] * 10
    await _sql(
        app,
        "UPDATE reservations SET expires_at = now() - interval '1 second' WHERE promo_id = :id",
        id=promo["id"],
    )
    # Newcomers and the lapsed holders themselves race for the ten returned units.
    second = await placed_users(app, 40, lat, lng)
    retry = await asyncio.gather(*(reserve(live_client, u, promo["id"]) for u in second + first))
    assert Counter(r.status_code for r in retry) == {201: 10, 409: 40}
    statuses = await _sql(
        app,
        "SELECT status, count(*) FROM reservations WHERE promo_id = :id GROUP BY status",
        id=promo["id"],
    )
    assert dict(statuses) == {"expired": 10, "held": 10}
    late = await asyncio.gather(
        *(
            live_client.post(f"/api/v1/reservations/{r.json()['id']}/purchase", headers=u.headers)
            for u, r in zip(first, held, strict=True)
        )
    )
    assert {r.status_code for r in late} == {409}
    await _assert_invariants(app, promo["id"])


async def test_purchase_racing_expiry_never_sells_a_unit_twice(
    app: FastAPI, live_client: httpx.AsyncClient, live_admin: ApiUser
) -> None:
    lat, lng = random_point()
    promo = await create_promo(live_client, live_admin, at=(lat, lng), quantity=20)
    holders = await placed_users(app, 20, lat, lng)
    held = await asyncio.gather(*(reserve(live_client, u, promo["id"]) for u in holders))
    assert [r.status_code for r in held] == [201] * 20
    # Every hold lapses a moment from now; holders buy and newcomers grab lapsed units
    # across that moment.
    await _sql(
        app,
        "UPDATE reservations SET expires_at = now() + interval '150 milliseconds'"
        " WHERE promo_id = :id",
        id=promo["id"],
    )
    newcomers = await placed_users(app, 40, lat, lng)

    async def buy(user: ApiUser, rid: str, delay: float) -> httpx.Response:
        await asyncio.sleep(delay)
        return await live_client.post(f"/api/v1/reservations/{rid}/purchase", headers=user.headers)

    async def grab(user: ApiUser, delay: float) -> httpx.Response:
        await asyncio.sleep(delay)
        return await reserve(live_client, user, promo["id"])

    results = await asyncio.gather(
        *(
            buy(u, r.json()["id"], 0.01 * i)
            for i, (u, r) in enumerate(zip(holders, held, strict=True))
        ),
        *(grab(u, 0.1 + 0.005 * i) for i, u in enumerate(newcomers)),
    )
    purchases, grabs = results[:20], results[20:]
    assert {r.status_code for r in purchases} <= {200, 409}
    assert {r.status_code for r in grabs} <= {201, 409}
    sold_by_api = sum(r.status_code == 200 for r in purchases)
    grabbed = sum(r.status_code == 201 for r in grabs)
    counts = await _assert_invariants(app, promo["id"])
    assert counts["sold"] == sold_by_api
    assert sold_by_api + grabbed <= 20

    # The newcomers can buy what they grabbed; still nothing sold twice.
    winners = [
        (u, r.json()["id"]) for u, r in zip(newcomers, grabs, strict=True) if r.status_code == 201
    ]
    await asyncio.gather(*(buy(u, rid, 0) for u, rid in winners))
    final = await _assert_invariants(app, promo["id"])
    assert final["sold"] <= 20


async def test_one_user_never_holds_two_live_reservations(
    app: FastAPI, live_client: httpx.AsyncClient, live_admin: ApiUser
) -> None:
    lat, lng = random_point()
    promo = await create_promo(live_client, live_admin, at=(lat, lng), quantity=5, max_per_user=2)
    (user,) = await placed_users(app, 1, lat, lng)
    burst = await asyncio.gather(*(reserve(live_client, user, promo["id"]) for _ in range(20)))
    assert Counter(r.status_code for r in burst) == {201: 1, 200: 19}
    assert len({r.json()["id"] for r in burst}) == 1
    rid = burst[0].json()["id"]
    assert (
        await live_client.post(f"/api/v1/reservations/{rid}/purchase", headers=user.headers)
    ).status_code == 200

    second = await asyncio.gather(*(reserve(live_client, user, promo["id"]) for _ in range(20)))
    assert Counter(r.status_code for r in second) == {201: 1, 200: 19}
    rid2 = next(r.json()["id"] for r in second if r.status_code == 201)
    await live_client.post(f"/api/v1/reservations/{rid2}/purchase", headers=user.headers)

    third = await asyncio.gather(*(reserve(live_client, user, promo["id"]) for _ in range(10)))
    assert {r.json()["type"] for r in third} == {"/problems/purchase-limit-reached"}
    counts = await _assert_invariants(app, promo["id"])
    assert counts["sold"] == 2


async def test_concurrent_double_purchase_and_cancel_of_one_reservation(
    app: FastAPI, live_client: httpx.AsyncClient, live_admin: ApiUser
) -> None:
    lat, lng = random_point()
    promo = await create_promo(live_client, live_admin, at=(lat, lng), quantity=1)
    (user,) = await placed_users(app, 1, lat, lng)
    rid = (await reserve(live_client, user, promo["id"])).json()["id"]
    calls = [
        live_client.post(f"/api/v1/reservations/{rid}/{action}", headers=user.headers)
        for action in ["purchase"] * 10 + ["cancel"] * 10
    ]
    results = await asyncio.gather(*calls)
    bought = results[:10]
    assert len({r.status_code for r in bought}) == 1  # all 200 or all 409, never a mix
    counts = await _assert_invariants(app, promo["id"])
    assert counts["sold"] == (1 if bought[0].status_code == 200 else 0)
    assert all(r.status_code in (200, 409) for r in results)
    assert str(uuid.UUID(rid)) == rid
