"""Gauges read at scrape time: requests in flight, the hot pool's waiters, and the database's
view (reachable, outbox depth, dead jobs, age of the oldest due job, lock waits)."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import httpx
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.ext.asyncio import create_async_engine
from starlette.types import Receive, Scope, Send

from app.core.metrics import (
    DB_UP,
    IN_FLIGHT,
    _hot_waiting,
    reset_database_sample,
    sample_database,
)
from app.core.middleware import RequestContextMiddleware
from app.core.settings import Settings
from tests.helpers import wait_for, wait_for_lock_waiters


def _samples(body: str) -> dict[str, float]:
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
        if not sample.labels
    }


async def _scrape(client: httpx.AsyncClient) -> dict[str, float]:
    reset_database_sample()
    response = await client.get("/metrics")
    assert response.status_code == 200
    return _samples(response.text)


async def test_requests_in_flight_count_while_answering_and_streams_apart() -> None:
    release = asyncio.Event()

    async def slow(scope: Scope, receive: Receive, send: Send) -> None:
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    app = RequestContextMiddleware(slow)
    transport = httpx.ASGITransport(app=app)
    before = (IN_FLIGHT.requests, IN_FLIGHT.streams)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        calls = [
            asyncio.create_task(client.get("/api/v1/books/x/assign")),
            asyncio.create_task(client.get("/api/v1/promos")),
            asyncio.create_task(client.get("/api/v1/me/notifications/stream")),
        ]
        await wait_for(lambda: IN_FLIGHT.requests == before[0] + 2, what="two in flight")
        assert IN_FLIGHT.streams == before[1] + 1
        release.set()
        await asyncio.gather(*calls)
    assert (IN_FLIGHT.requests, IN_FLIGHT.streams) == before


async def test_hot_pool_waiters_are_counted(settings: Settings) -> None:
    pool = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=1)

    async def take() -> Any:
        return await pool.acquire()

    try:
        held = await pool.acquire()
        assert _hot_waiting(pool) == 0
        waiting = [asyncio.create_task(take()) for _ in range(2)]
        await wait_for(lambda: _hot_waiting(pool) == 2, what="two waiters")
        await pool.release(held)
        first = await asyncio.wait_for(asyncio.shield(waiting[0]), 5)
        await pool.release(first)
        second = await asyncio.wait_for(asyncio.shield(waiting[1]), 5)
        assert _hot_waiting(pool) == 0
        await pool.release(second)
    finally:
        pool.terminate()


async def test_scrape_reports_outbox_depth_age_and_dead_jobs(
    live_client: httpx.AsyncClient, pg: asyncpg.Connection
) -> None:
    ids = [
        await pg.fetchval(
            "INSERT INTO outbox (topic, key, run_at, status) "
            "VALUES ('metrics.test', $1, now() - interval '1 hour', $2) RETURNING id",
            key,
            status,
        )
        for key, status in (("old-pending", "pending"), ("dead-one", "dead"))
    ]
    try:
        seen = await _scrape(live_client)
        assert seen["db_up"] == 1
        assert seen["outbox_pending_jobs"] >= 1
        assert seen["outbox_dead_jobs"] >= 1
        assert seen["outbox_oldest_pending_age_seconds"] >= 3600
    finally:
        await pg.execute("DELETE FROM outbox WHERE id = ANY($1::bigint[])", ids)
    after = await _scrape(live_client)
    assert after["outbox_oldest_pending_age_seconds"] < 3600


async def test_scrape_reports_lock_waits(
    live_client: httpx.AsyncClient, pg: asyncpg.Connection, settings: Settings
) -> None:
    waiter = await asyncpg.connect(settings.database_url)
    try:
        holder = pg.transaction()
        await holder.start()
        await pg.execute("SELECT pg_advisory_xact_lock(424242)")
        blocked = asyncio.create_task(waiter.execute("SELECT pg_advisory_lock(424242)"))
        await wait_for_lock_waiters(pg, 1, blocked_by=[pg.get_server_pid()])
        assert (await _scrape(live_client))["db_lock_waits"] >= 1
        await holder.rollback()
        await blocked
        await waiter.execute("SELECT pg_advisory_unlock(424242)")
    finally:
        await waiter.close()


async def test_unreachable_database_reads_as_down_and_the_scrape_still_answers() -> None:
    class Unreachable:
        engine = create_async_engine("postgresql+asyncpg://nobody@127.0.0.1:1/none")

    reset_database_sample()
    db: Any = Unreachable()
    try:
        await sample_database(db, timeout_s=2)
        assert DB_UP._value.get() == 0
    finally:
        await Unreachable.engine.dispose()
        reset_database_sample()
