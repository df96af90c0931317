"""The outbox: durable jobs in PostgreSQL, claimed by workers with `FOR UPDATE SKIP LOCKED`.

A job is `pending` until a worker claims it (`running`, with `locked_by`/`locked_at` as its
lease), then `done`, `dead` (attempts exhausted: a dead letter) or `cancelled`. Inserting a job
NOTIFYs channel `outbox` (a trigger), which wakes sleeping workers.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import orjson
from asyncpg.pool import PoolConnectionProxy
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.locking import LockNamespace, try_xact_lock_sql, xact_lock_sql

# A plain connection or one borrowed from a pool.
Conn = asyncpg.Connection | PoolConnectionProxy

CHANNEL = "outbox"
PROMO_STARTED = "promo.started"
WEBHOOK_DELIVER = "webhook.deliver"
FANOUT_MAX_ATTEMPTS = 10


def promo_job_key(promo_id: uuid.UUID) -> str:
    return f"{PROMO_STARTED}:{promo_id}"


@dataclass(frozen=True)
class Job:
    id: int
    topic: str
    payload: dict[str, Any]
    attempts: int
    max_attempts: int


# Scheduling (called from the promos service inside its request transaction) ---------------

_LOCK_PROMO = text(f"SELECT {xact_lock_sql(LockNamespace.OUTBOX, 'CAST(:promo_id AS text)')}")
_SCHEDULE = text(
    """
    INSERT INTO outbox (topic, key, payload, run_at, max_attempts)
    VALUES (:topic, :key, CAST(:payload AS jsonb), coalesce(:run_at, now()), :max_attempts)
    ON CONFLICT (key) WHERE status = 'pending'
    DO UPDATE SET run_at = EXCLUDED.run_at, updated_at = now()
    RETURNING id
    """
)
_WAKE = text("SELECT pg_notify('outbox', '')")
_CANCEL = text(
    """
    UPDATE outbox SET status = 'cancelled', updated_at = now()
    WHERE key = :key AND status = 'pending'
    """
)


async def schedule_promo_started(
    session: AsyncSession, promo_id: uuid.UUID, run_at: datetime | None
) -> int:
    """Schedule (or move) the promo's `promo.started` job to `run_at` (None = now).

    One pending job per promo: calling again after an edit moves it. A promo already
    fanned out is not notified twice (the fan-out keeps its own progress row)."""
    await session.execute(_LOCK_PROMO, {"promo_id": str(promo_id)})
    job_id: int = (
        await session.execute(
            _SCHEDULE,
            {
                "topic": PROMO_STARTED,
                "key": promo_job_key(promo_id),
                "payload": orjson.dumps({"promo_id": str(promo_id)}).decode(),
                "run_at": run_at,
                "max_attempts": FANOUT_MAX_ATTEMPTS,
            },
        )
    ).scalar_one()
    await session.execute(_WAKE)  # a moved job inserts nothing, so the trigger stays quiet
    return job_id


async def cancel_promo_jobs(session: AsyncSession, promo_id: uuid.UUID) -> int:
    """Cancel the promo's pending `promo.started` job; a running fan-out stops at its next
    batch when it sees the promo cancelled. Returns the number of jobs cancelled."""
    await session.execute(_LOCK_PROMO, {"promo_id": str(promo_id)})
    result = await session.execute(_CANCEL, {"key": promo_job_key(promo_id)})
    return int(getattr(result, "rowcount", 0) or 0)


async def enqueue(
    session: AsyncSession,
    topic: str,
    payload: dict[str, Any],
    *,
    run_at: datetime | None = None,
    max_attempts: int = 8,
) -> int:
    """Add a job in the caller's transaction: it exists exactly when the caller commits."""
    stmt = text(
        "INSERT INTO outbox (topic, payload, run_at, max_attempts)"
        " VALUES (:topic, CAST(:payload AS jsonb), coalesce(:run_at, now()), :max_attempts)"
        " RETURNING id"
    )
    params = {
        "topic": topic,
        "payload": orjson.dumps(payload).decode(),
        "run_at": run_at,
        "max_attempts": max_attempts,
    }
    job_id: int = (await session.execute(stmt, params)).scalar_one()
    return job_id


# Worker side (raw asyncpg connections, short transactions) --------------------------------

# A keyed job going back to `pending` while another with its key is already pending, or a
# newer one is running (the promo was rescheduled meanwhile), is superseded: it becomes
# `cancelled`, never a duplicate. The newer-running case lets one statement take back two
# jobs of one promo (recovery) without making both pending.
_BACK_TO_PENDING = """
CASE WHEN key IS NOT NULL AND EXISTS (
        SELECT 1 FROM outbox d WHERE d.key = outbox.key AND d.id <> outbox.id
        AND (d.status = 'pending' OR (d.status = 'running' AND d.id > outbox.id)))
     THEN 'cancelled' ELSE 'pending' END
"""

# The check above reads other jobs' state, so it runs under the scheduling lock of the job's
# promo, as its own statement first: an edit of the promo inserting a new pending job has
# then either committed (and the check sees it) or not started (and finds this job pending).
# Without it, the job went back to `pending` beside the edit's uncommitted one, hit the
# one-pending-per-key index when the edit committed, and stayed `running` until its lease.
_PROMO_KEY_SQL = "o.payload->>'promo_id'"
_LOCK_JOB_PROMO = f"""
SELECT {xact_lock_sql(LockNamespace.OUTBOX, _PROMO_KEY_SQL)}
FROM outbox o WHERE o.id = $1 AND o.topic = '{PROMO_STARTED}'
"""

# MATERIALIZED: the planner may otherwise re-run the sub-select and claim more than `limit`.
_CLAIM = """
WITH due AS MATERIALIZED (
    SELECT id FROM outbox
    WHERE status = 'pending' AND run_at <= now()
    ORDER BY run_at, id
    LIMIT $2
    FOR UPDATE SKIP LOCKED
)
UPDATE outbox o
SET status = 'running', locked_by = $1, locked_at = now(), attempts = o.attempts + 1,
    updated_at = now()
FROM due WHERE o.id = due.id
RETURNING o.id, o.topic, o.payload, o.attempts, o.max_attempts
"""


def _job(row: asyncpg.Record) -> Job:
    payload = row["payload"]
    return Job(
        id=row["id"],
        topic=row["topic"],
        payload=orjson.loads(payload) if isinstance(payload, str | bytes) else dict(payload),
        attempts=row["attempts"],
        max_attempts=row["max_attempts"],
    )


async def claim(conn: Conn, worker_id: str, limit: int) -> list[Job]:
    """Claim up to `limit` due jobs for this worker (autocommit: one statement)."""
    rows = await conn.fetch(_CLAIM, worker_id, limit)
    return sorted((_job(r) for r in rows), key=lambda j: j.id)


async def complete(conn: Conn, job_id: int, worker_id: str) -> bool:
    status = await conn.execute(
        "UPDATE outbox SET status = 'done', locked_by = NULL, updated_at = now()"
        " WHERE id = $1 AND status = 'running' AND locked_by = $2",
        job_id,
        worker_id,
    )
    return status.endswith(" 1")


async def fail(conn: Conn, job: Job, worker_id: str, error: str, retry_in_s: float) -> bool:
    """Record a failed attempt: back to `pending` after `retry_in_s`, or `dead` when the
    attempts are used up. Returns True when the job became a dead letter."""
    dead = job.attempts >= job.max_attempts
    async with conn.transaction():
        await conn.execute(_LOCK_JOB_PROMO, job.id)
        await conn.execute(
            f"""
            UPDATE outbox
            SET status = CASE WHEN $3 THEN 'dead' ELSE {_BACK_TO_PENDING} END,
                last_error = left($4, 2000), locked_by = NULL, locked_at = NULL,
                run_at = now() + make_interval(secs => $5), updated_at = now()
            WHERE id = $1 AND status = 'running' AND locked_by = $2
            """,
            job.id,
            worker_id,
            dead,
            error,
            retry_in_s,
        )
    return dead


async def release(conn: Conn, job_id: int, worker_id: str) -> None:
    """Give an unfinished job back (shutdown): pending again, and the attempt not counted."""
    async with conn.transaction():
        await conn.execute(_LOCK_JOB_PROMO, job_id)
        await conn.execute(
            f"UPDATE outbox SET status = {_BACK_TO_PENDING}, locked_by = NULL, locked_at = NULL,"
            " attempts = greatest(attempts - 1, 0), run_at = now(), updated_at = now()"
            " WHERE id = $1 AND status = 'running' AND locked_by = $2",
            job_id,
            worker_id,
        )
        await conn.execute("SELECT pg_notify('outbox', '')")


async def reschedule(conn: Conn, job_id: int, worker_id: str, at: datetime) -> None:
    """Put a job back for later without counting an attempt (a promo moved its start)."""
    async with conn.transaction():
        await conn.execute(_LOCK_JOB_PROMO, job_id)
        await conn.execute(
            f"UPDATE outbox SET status = {_BACK_TO_PENDING}, locked_by = NULL, locked_at = NULL,"
            " attempts = greatest(attempts - 1, 0), run_at = $3, updated_at = now()"
            " WHERE id = $1 AND status = 'running' AND locked_by = $2",
            job_id,
            worker_id,
            at,
        )


# A running job whose lease ran out ($2 seconds) or whose worker has no connection left.
_ORPHAN = """{job}.status = 'running'
AND ({job}.locked_at < now() - make_interval(secs => $2)
     OR NOT EXISTS (SELECT 1 FROM pg_stat_activity a
                    WHERE a.application_name = $1 || {job}.locked_by))"""


async def recover_orphans(conn: Conn, app_prefix: str, lease_s: float) -> int:
    """Jobs whose worker is gone (its listening connection vanished) or whose lease ran out go
    back to `pending`, or to `dead` when that was their last attempt."""
    async with conn.transaction():
        # The scheduling lock of each orphan's promo, without waiting (the worker's loop runs
        # this): a promo whose lock is busy keeps its orphans until a later round.
        busy: list[str] = await conn.fetchval(
            f"""
            SELECT coalesce(array_agg(k.promo), '{{}}') FROM (
                SELECT DISTINCT {_PROMO_KEY_SQL} AS promo FROM outbox o
                WHERE o.topic = '{PROMO_STARTED}' AND {_ORPHAN.format(job="o")}) AS k
            WHERE NOT {try_xact_lock_sql(LockNamespace.OUTBOX, "k.promo")}
            """,
            app_prefix,
            lease_s,
        )
        rows = await conn.fetch(
            f"""
            UPDATE outbox
            SET status = CASE WHEN attempts >= max_attempts THEN 'dead'
                              ELSE {_BACK_TO_PENDING} END,
                last_error = 'worker lost while running the job', locked_by = NULL,
                locked_at = NULL, run_at = now(), updated_at = now()
            WHERE {_ORPHAN.format(job="outbox")}
              AND NOT (topic = '{PROMO_STARTED}' AND payload->>'promo_id' = ANY($3::text[]))
            RETURNING id
            """,
            app_prefix,
            lease_s,
            busy,
        )
    return len(rows)


async def due_state(conn: Conn) -> tuple[float, float | None]:
    """(lag of the oldest due job in seconds, seconds until the next pending job or None)."""
    row = await conn.fetchrow(
        "SELECT extract(epoch FROM now() - min(run_at))::float8 AS age FROM outbox"
        " WHERE status = 'pending'"
    )
    age: float | None = row["age"] if row else None
    if age is None:
        return 0.0, None
    return max(age, 0.0), max(-age, 0.0)


async def purge_finished(conn: Conn, older_than_s: float) -> int:
    rows = await conn.fetch(
        "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox"
        " WHERE status IN ('done', 'cancelled')"
        " AND updated_at < now() - make_interval(secs => $1) LIMIT 10000) RETURNING id",
        older_than_s,
    )
    return len(rows)
