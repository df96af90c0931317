"""Real worker processes: SIGKILL mid fan-out, and two workers racing."""

from __future__ import annotations

import signal
import uuid
from functools import partial

import asyncpg
from fastapi import FastAPI

from app.core.settings import Settings
from app.notifications.worker import APP_PREFIX
from bench.common import stop
from tests.notifications.conftest import (
    Place,
    add_promo,
    add_users,
    fanout_finished,
    schedule,
    spawn_worker,
    wait_for,
)

# Workers started since $2 whose listening connection is open (each worker's connections
# carry its own application_name).
_LISTENING = """
SELECT count(DISTINCT application_name) >= 2 FROM pg_stat_activity
WHERE datname = current_database() AND application_name LIKE $1 || '%'
  AND backend_start > $2 AND query LIKE 'LISTEN%'
"""


async def _assert_each_eligible_user_notified_once(
    pg: asyncpg.Connection, users: list[uuid.UUID]
) -> None:
    rows = await pg.fetch(
        "SELECT user_id, count(*) AS n FROM notifications WHERE user_id = ANY($1) GROUP BY user_id",
        users,
    )
    counts = {r["user_id"]: r["n"] for r in rows}
    assert len(counts) == len(users), f"{len(users) - len(counts)} users never notified"
    assert set(counts.values()) == {1}


async def test_worker_killed_mid_fanout_resumes_without_gaps_or_duplicates(
    app: FastAPI, pg: asyncpg.Connection, settings: Settings
) -> None:
    place = Place()
    users = await add_users(pg, place.north(100), 20_000)
    promo = await add_promo(pg, place)
    first = spawn_worker(settings, NOTIFY_BATCH_SIZE="50")
    try:
        await schedule(app, promo)
        await wait_for(
            lambda: pg.fetchval(
                "SELECT batches >= 20 FROM notification_fanouts WHERE promo_id = $1", promo
            ),
            timeout=60,
            every=0.01,
        )
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
    finally:
        if first.poll() is None:
            first.kill()
    progress = await pg.fetchrow(
        "SELECT status, notified FROM notification_fanouts WHERE promo_id = $1", promo
    )
    assert progress is not None
    assert progress["status"] == "sending", "the fan-out finished before the kill"
    assert 0 < progress["notified"] < len(users)

    second = spawn_worker(settings, NOTIFY_BATCH_SIZE="1000")
    try:
        assert await wait_for(lambda: fanout_finished(pg, promo), timeout=60) == "done"
    finally:
        stop(second, 20)
    await _assert_each_eligible_user_notified_once(pg, users)
    assert await pg.fetchval(
        "SELECT notified FROM notification_fanouts WHERE promo_id = $1", promo
    ) == len(users)
    job = await pg.fetchrow(
        "SELECT status, attempts FROM outbox WHERE topic = 'promo.started' AND key = $1",
        str(promo),
    )
    assert job is not None
    assert job["status"] == "done" and job["attempts"] == 2


async def test_two_workers_at_once_notify_nobody_twice(
    app: FastAPI, pg: asyncpg.Connection, settings: Settings
) -> None:
    place = Place()
    users = await add_users(pg, place.north(100), 5_000)
    promos = [await add_promo(pg, place, title=f"deal {i}") for i in range(3)]
    since = await pg.fetchval("SELECT clock_timestamp()")
    workers = [spawn_worker(settings, NOTIFY_BATCH_SIZE="100") for _ in range(2)]
    try:
        # Both are up (each listening for new jobs) before any job exists, so they race.
        await wait_for(
            lambda: pg.fetchval(_LISTENING, APP_PREFIX, since),
            timeout=60,
            what="two workers listening",
        )
        for promo in promos:
            await schedule(app, promo)
        for promo in promos:
            assert await wait_for(partial(fanout_finished, pg, promo), timeout=60) == "done"
    finally:
        for proc in workers:
            stop(proc, 20)
    await _assert_each_eligible_user_notified_once(pg, users)
    total = await pg.fetchval(
        "SELECT sum(notified) FROM notification_fanouts WHERE promo_id = ANY($1)", promos
    )
    assert total == len(users)
