from __future__ import annotations

import asyncio

import asyncpg
from fastapi import FastAPI

from app.core.settings import Settings
from app.main import create_app
from app.notifications.worker import WORKER_STATE_KEY
from tests.helpers import started
from tests.notifications.conftest import (
    Place,
    RunWorker,
    add_promo,
    add_users,
    fanout_finished,
    schedule,
    wait_for,
)


async def test_graceful_stop_hands_the_fanout_back_and_another_worker_finishes_it(
    app: FastAPI, pg: asyncpg.Connection, run_worker: RunWorker
) -> None:
    place = Place()
    users = await add_users(pg, place.north(100), 10_000)
    promo = await add_promo(pg, place)
    await schedule(app, promo)
    first = await run_worker(batch_size=50)
    await wait_for(
        lambda: pg.fetchval(
            "SELECT batches >= 5 FROM notification_fanouts WHERE promo_id = $1", promo
        ),
        every=0.01,
    )
    first.stop()
    job = await wait_for(
        lambda: pg.fetchrow(
            "SELECT attempts, locked_by FROM outbox"
            " WHERE topic = 'promo.started' AND key = $1 AND status = 'pending'",
            str(promo),
        ),
        timeout=10,
        every=0.01,
    )
    assert job["attempts"] == 0 and job["locked_by"] is None  # handed back, not a failure
    assert (
        await pg.fetchval("SELECT status FROM notification_fanouts WHERE promo_id = $1", promo)
        == "sending"
    )
    await asyncio.sleep(0)
    await run_worker()
    assert await wait_for(lambda: fanout_finished(pg, promo)) == "done"
    count = await pg.fetchval(
        "SELECT count(DISTINCT user_id) = count(*) AND count(*) = $2 FROM notifications"
        " WHERE promo_id = $1",
        promo,
        len(users),
    )
    assert count


async def test_api_lifespan_runs_a_worker_when_enabled(
    settings: Settings, pg: asyncpg.Connection
) -> None:
    application = create_app(settings.model_copy(update={"run_worker": True}))
    place = Place()
    [user] = await add_users(pg, place.north(10))
    promo = await add_promo(pg, place)
    async with started(application) as served:
        worker = served.state[WORKER_STATE_KEY]
        application.state.db = served.services.db
        assert worker is not None
        await schedule(application, promo)
        assert await wait_for(lambda: fanout_finished(pg, promo)) == "done"
    assert await pg.fetchval("SELECT count(*) FROM notifications WHERE user_id = $1", user) == 1
    leftovers = await pg.fetchval("SELECT count(*) FROM outbox WHERE locked_by = $1", worker.id)
    assert leftovers == 0
