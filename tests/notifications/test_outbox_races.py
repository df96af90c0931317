"""A running job settled by its worker (fail, release, reschedule, orphan recovery) while its
promo is being rescheduled, over many real connections at once."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
from fastapi import FastAPI

from app.core import outbox
from app.core.db import libpq_url
from app.core.outbox import Job
from app.core.settings import Settings
from app.promos import events
from tests.helpers import wait_for_lock_waiters
from tests.notifications.conftest import Place, add_promo, schedule

PER_OPERATION = 5
LIVE_WORKER = "live"


async def _running_job(pg: asyncpg.Connection, app: FastAPI, worker: str) -> tuple[uuid.UUID, int]:
    """A promo whose `promo.started` job a worker has claimed."""
    promo_id = await add_promo(pg, Place(), starts_in_s=3600)
    await schedule(app, promo_id)
    job_id: int = await pg.fetchval(
        "UPDATE outbox SET status = 'running', locked_by = $3, locked_at = now(),"
        " attempts = attempts + 1 WHERE topic = $1 AND key = $2 AND status = 'pending'"
        " RETURNING id",
        events.PROMO_STARTED,
        str(promo_id),
        worker,
    )
    assert job_id is not None
    return promo_id, job_id


async def _statuses(pg: asyncpg.Connection, promo_id: uuid.UUID) -> list[str]:
    rows = await pg.fetch(
        "SELECT status FROM outbox WHERE topic = $1 AND key = $2 ORDER BY id",
        events.PROMO_STARTED,
        str(promo_id),
    )
    return [r["status"] for r in rows]


async def test_settling_a_running_job_while_its_promo_is_rescheduled(
    app: FastAPI, pg: asyncpg.Connection, settings: Settings
) -> None:
    """Each promo's job is running when an edit of the promo schedules a new pending job; the
    worker settles the old one before that edit commits. The old job must end `cancelled`
    (superseded by the new one), never stay `running` until its lease runs out."""
    prefix = f"race-{uuid.uuid4().hex[:8]} "
    pool = await asyncpg.create_pool(
        libpq_url(settings.database_url or ""),
        min_size=4,
        max_size=4 * PER_OPERATION,
        statement_cache_size=settings.statement_cache_size,
        server_settings={"application_name": prefix + LIVE_WORKER},
    )
    assert pool is not None
    later = await pg.fetchval("SELECT now() + interval '1 hour'")
    cases: list[tuple[str, uuid.UUID, int]] = []
    for operation in ("fail", "release", "reschedule", "recover"):
        # Jobs of a worker whose connection is alive, except those orphan recovery takes back.
        worker = LIVE_WORKER if operation != "recover" else f"gone-{uuid.uuid4().hex[:6]}"
        for _ in range(PER_OPERATION):
            cases.append((operation, *await _running_job(pg, app, worker)))

    async def settle(operation: str, job_id: int) -> Any:
        async with pool.acquire() as conn:
            if operation == "fail":
                job = Job(job_id, events.PROMO_STARTED, {}, 1, events.STARTED_MAX_ATTEMPTS)
                return await outbox.fail(conn, job, LIVE_WORKER, "boom", 0.0)
            if operation == "release":
                return await outbox.release(conn, job_id, LIVE_WORKER)
            if operation == "reschedule":
                return await outbox.reschedule(conn, job_id, LIVE_WORKER, later)
            return await outbox.recover_orphans(conn, prefix, 3600)

    sessions = []
    try:
        for _, promo_id, _ in cases:
            session = app.state.db.sessionmaker()
            await session.begin()
            sessions.append(session)
            await events.schedule_started(session, promo_id, None)
        settling = [
            asyncio.create_task(settle(operation, job_id))
            for operation, _, job_id in cases
            if operation != "recover"
        ]
        recovering = asyncio.create_task(settle("recover", 0))
        # Every settling call is blocked on a promo an edit holds, and recovery has passed
        # the edited promos by, before any edit commits.
        await wait_for_lock_waiters(
            pg, len(settling), application_name=prefix + LIVE_WORKER, timeout=30
        )
        finished, _ = await asyncio.wait({recovering}, timeout=10)
        assert finished, "orphan recovery waited for a promo being edited"
        assert not any(s.done() for s in settling), [s.result() for s in settling if s.done()]
        settling.append(recovering)
        await asyncio.gather(*[s.commit() for s in sessions])
        results = await asyncio.gather(*settling, return_exceptions=True)
        # Recovery does not wait for a promo being edited: it takes the rest next round.
        results.append(await settle("recover", 0))
    finally:
        for session in sessions:
            await session.close()
        await pool.close()
    errors = [r for r in results if isinstance(r, BaseException)]
    assert not errors, f"{len(errors)} of {len(results)} failed: {errors[:2]}"
    assert results[-2] + results[-1] >= PER_OPERATION  # recovery took its jobs back
    for operation, promo_id, _ in cases:
        assert await _statuses(pg, promo_id) == ["cancelled", "pending"], operation


async def test_recovery_of_two_orphans_of_one_promo_keeps_one_pending(
    app: FastAPI, pg: asyncpg.Connection
) -> None:
    """A promo edited while its job ran gets a second job; if both were running when their
    worker died, recovery must not try to make both pending (one pending job per promo)."""
    promo_id, _ = await _running_job(pg, app, f"gone-{uuid.uuid4().hex[:6]}")
    async with app.state.db.sessionmaker() as session, session.begin():
        await events.schedule_started(session, promo_id, None)
    await pg.execute(
        "UPDATE outbox SET status = 'running', locked_by = $3, locked_at = now(),"
        " attempts = attempts + 1 WHERE topic = $1 AND key = $2 AND status = 'pending'",
        events.PROMO_STARTED,
        str(promo_id),
        f"gone-{uuid.uuid4().hex[:6]}",
    )
    assert await _statuses(pg, promo_id) == ["running", "running"]
    recovered = await outbox.recover_orphans(pg, f"race-{uuid.uuid4().hex[:8]} ", 3600)
    assert recovered >= 2
    assert await _statuses(pg, promo_id) == ["cancelled", "pending"]
