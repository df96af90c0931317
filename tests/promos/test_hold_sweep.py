"""The sweep of lapsed holds (`retire_lapsed_holds`, run by the worker on every poll): holds
nobody takes over, such as those of a cancelled promo, are closed once and their units
freed, a bounded batch at a time, and what clients read does not change."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace

import asyncpg
import httpx
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from app.check import CHECKS, run_checks, violations
from app.core.db import libpq_url
from app.core.security import Role
from app.notifications.worker import Worker, WorkerConfig
from app.promos.reservations import retire_lapsed_holds
from tests.conftest import MakeUser
from tests.helpers import ApiUser, wait_for
from tests.promos.support import create_promo, place, random_point, reserve

_PROMO_TABLES = {"promos", "promo_units", "promo_sales", "reservations"}


async def _states(driver: asyncpg.Connection, promo_id: str) -> tuple[dict[str, int], ...]:
    """(reservations by status, units by state) of the promo."""
    holds = await driver.fetch(
        "SELECT status, count(*) FROM reservations WHERE promo_id = $1 GROUP BY 1",
        uuid.UUID(promo_id),
    )
    units = await driver.fetch(
        "SELECT state, count(*) FROM promo_units WHERE promo_id = $1 GROUP BY 1",
        uuid.UUID(promo_id),
    )
    return dict(list(map(tuple, holds))), dict(list(map(tuple, units)))


async def test_the_sweep_closes_lapsed_holds_of_a_cancelled_promo_once(
    client: httpx.AsyncClient,
    admin: ApiUser,
    make_user: MakeUser,
    conn: AsyncConnection,
) -> None:
    lat, lng = random_point()
    promo = await create_promo(client, admin, at=(lat, lng), quantity=5)
    holders = [await make_user() for _ in range(4)]
    ids = []
    for holder in holders:
        await place(client, holder, lat, lng)
        answer = await reserve(client, holder, promo["id"])
        assert answer.status_code == 201, answer.text
        ids.append(answer.json()["id"])
    await conn.execute(
        text(
            "UPDATE reservations SET expires_at = now() - interval '1 second'"
            " WHERE id = ANY (CAST(:ids AS uuid[]))"
        ),
        {"ids": ids[:3]},
    )
    cancelled = await client.post(f"/api/v1/promos/{promo['id']}/cancel", headers=admin.headers)
    assert cancelled.status_code == 200, cancelled.text
    shown = [
        (await client.get(f"/api/v1/reservations/{i}", headers=h.headers)).json()
        for i, h in zip(ids, holders, strict=True)
    ]

    driver = (await conn.get_raw_connection()).driver_connection
    assert await retire_lapsed_holds(driver, 1) == 1  # a bounded batch
    while await retire_lapsed_holds(driver, 1000):  # other tests' lapsed holds too
        pass
    assert await _states(driver, promo["id"]) == (
        {"expired": 3, "held": 1},
        {"free": 4, "held": 1},
    )
    # Closed once: nothing of this promo is left for the sweep, and clients read the same.
    assert await retire_lapsed_holds(driver, 1000) == 0
    again = [
        (await client.get(f"/api/v1/reservations/{i}", headers=h.headers)).json()
        for i, h in zip(ids, holders, strict=True)
    ]
    assert again == shown
    assert [s["status"] for s in again] == ["expired"] * 3 + ["held"]
    checks = tuple(c for c in CHECKS if _PROMO_TABLES & set(c.tables))
    assert violations(await run_checks(driver, checks)) == []


async def test_the_worker_retires_lapsed_holds_on_its_own(
    app: FastAPI, live_client: httpx.AsyncClient, make_live_user: MakeUser
) -> None:
    admin = await make_live_user(Role.admin)
    holder = await make_live_user()
    lat, lng = random_point()
    promo = await create_promo(live_client, admin, at=(lat, lng), quantity=2)
    await place(live_client, holder, lat, lng)
    held = await reserve(live_client, holder, promo["id"])
    assert held.status_code == 201, held.text
    settings = app.state.settings
    url = libpq_url(settings.database_url or "")
    pg = await asyncpg.connect(url)
    try:
        await pg.execute(
            "UPDATE reservations SET expires_at = now() - interval '1 second' WHERE id = $1",
            uuid.UUID(held.json()["id"]),
        )
        config = WorkerConfig(database_url=url, direct_url=url, poll_seconds=0.2)
        worker = Worker(replace(config, statement_cache_size=settings.statement_cache_size))
        running = asyncio.create_task(worker.run())
        hold = uuid.UUID(held.json()["id"])

        async def expired() -> bool:
            status = await pg.fetchval("SELECT status FROM reservations WHERE id = $1", hold)
            return bool(status == "expired")

        try:
            await wait_for(expired, timeout=30, what="the worker retired the lapsed hold")
        finally:
            worker.stop()
            await asyncio.wait_for(running, timeout=30)
        assert await _states(pg, promo["id"]) == ({"expired": 1}, {"free": 2})
    finally:
        await pg.close()
