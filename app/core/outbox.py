"""The outbox: durable jobs in PostgreSQL, written in the producer's transaction and claimed
by workers with `FOR UPDATE SKIP LOCKED`. It knows topics and keys, never what a job means.

A job is `pending` until a worker claims it (`running`, with `locked_by`/`locked_at` as its
lease), then `done`, `dead` (attempts exhausted: a dead letter) or `cancelled`. Inserting a job
NOTIFYs channel `outbox` (a trigger), which wakes sleeping workers.

A keyed job (`key` not NULL) is pending at most once per (topic, key): scheduling it again
moves it, cancelling it cancels the pending one. Everything that changes keyed jobs, the
producer's schedule and cancel as well as the worker's settling, runs under a transaction
lock on (topic, key), so an edit and a settle never both decide what is pending.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import orjson
from asyncpg.pool import PoolConnectionProxy
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from app.core import tracing
from app.core.locking import LockNamespace, try_xact_lock_sql, xact_lock_sql

# A plain connection or one borrowed from a pool.
Conn = asyncpg.Connection | PoolConnectionProxy

CHANNEL = "outbox"


@dataclass(frozen=True)
class Job:
    id: int
    topic: str
    payload: dict[str, Any]
    attempts: int
    max_attempts: int


def _lock_name(topic_sql: str, key_sql: str) -> str:
    # One text per (topic, key); a ':' inside a topic can only make two names share a lock,
    # which serialises more than needed and never less.
    return f"({topic_sql}) || ':' || ({key_sql})"


def key_lock_sql(topic_sql: str, key_sql: str) -> str:
    """SQL fragment taking the transaction lock of a keyed job (text expressions)."""
    return xact_lock_sql(LockNamespace.OUTBOX, _lock_name(topic_sql, key_sql))


# Producer side (inside the caller's transaction) ------------------------------------------

_LOCK = text(f"SELECT {key_lock_sql('CAST(:topic AS text)', 'CAST(:key AS text)')}")
_SCHEDULE = text(
    """
    INSERT INTO outbox (topic, key, payload, run_at, max_attempts)
    VALUES (:topic, :key, CAST(:payload AS jsonb), coalesce(:run_at, now()), :max_attempts)
    ON CONFLICT (topic, key) WHERE status = 'pending'
    DO UPDATE SET run_at = EXCLUDED.run_at, payload = EXCLUDED.payload,
                  max_attempts = EXCLUDED.max_attempts, updated_at = now()
    RETURNING id
    """
)
_WAKE = text(f"SELECT pg_notify('{CHANNEL}', '')")
_CANCEL = text(
    """
    UPDATE outbox SET status = 'cancelled', updated_at = now()
    WHERE topic = :topic AND key = :key AND status = 'pending'
    """
)


async def lock(session: AsyncSession, topic: str, key: str) -> None:
    """Hold the lock of (topic, key) until the caller's transaction ends."""
    await session.execute(_LOCK, {"topic": topic, "key": key})


async def schedule(
    session: AsyncSession,
    topic: str,
    key: str,
    *,
    payload: dict[str, Any],
    run_at: datetime | None = None,
    max_attempts: int = 8,
) -> int:
    """Schedule the (topic, key) job at `run_at` (None = now), in the caller's transaction:
    it exists exactly when the caller commits. Scheduling again while it is pending moves
    it (new `run_at` and payload) instead of adding a second one. Returns the job id."""
    await lock(session, topic, key)
    job_id: int = (
        await session.execute(
            _SCHEDULE,
            {
                "topic": topic,
                "key": key,
                "payload": orjson.dumps(tracing.with_trace(payload)).decode(),
                "run_at": run_at,
                "max_attempts": max_attempts,
            },
        )
    ).scalar_one()
    await session.execute(_WAKE)  # a moved job inserts nothing, so the trigger stays quiet
    return job_id


async def cancel(session: AsyncSession, topic: str, key: str) -> int:
    """Cancel the pending (topic, key) job, if any; a running one is its handler's business
    (it should check its subject's state). Returns the number of jobs cancelled."""
    await lock(session, topic, key)
    result = await session.execute(_CANCEL, {"topic": topic, "key": key})
    return int(getattr(result, "rowcount", 0) or 0)


# Worker side (raw asyncpg connections, short transactions) --------------------------------

# A keyed job going back to `pending` while another with its topic and key is already
# pending, or a newer one is running (it was rescheduled meanwhile), is superseded: it becomes
# `cancelled`, never a duplicate. The newer-running case lets one statement take back two
# jobs of one key (recovery) without making both pending.
_BACK_TO_PENDING = """
CASE WHEN key IS NOT NULL AND EXISTS (
        SELECT 1 FROM outbox d
        WHERE d.topic = outbox.topic AND d.key = outbox.key AND d.id <> outbox.id
        AND (d.status = 'pending' OR (d.status = 'running' AND d.id > outbox.id)))
     THEN 'cancelled' ELSE 'pending' END
"""

# The check above reads other jobs' state, so it runs under the job's key lock, as its own
# statement first: a producer scheduling the key anew has then either committed (and the
# check sees its job) or not started (and finds this one pending). Without it, the job went
# back to `pending` beside the producer's uncommitted one, hit the one-pending-per-key index
# when the producer committed, and stayed `running` until its lease ran out.
_LOCK_JOB_KEY = f"""
SELECT {key_lock_sql("o.topic", "o.key")}
FROM outbox o WHERE o.id = $1 AND o.key IS NOT NULL
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


async def renew(conn: Conn, job_id: int, worker_id: str) -> bool:
    """Extend the lease of a long job this worker runs; False when it is no longer ours."""
    status = await conn.execute(
        "UPDATE outbox SET locked_at = now() WHERE id = $1 AND status = 'running'"
        " AND locked_by = $2",
        job_id,
        worker_id,
    )
    return status.endswith(" 1")


async def fail(conn: Conn, job: Job, worker_id: str, error: str, retry_in_s: float) -> bool:
    """Record a failed attempt: back to `pending` after `retry_in_s`, or `dead` when the
    attempts are used up. Returns True when the job became a dead letter."""
    dead = job.attempts >= job.max_attempts
    async with conn.transaction():
        await conn.execute(_LOCK_JOB_KEY, job.id)
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
        await conn.execute(_LOCK_JOB_KEY, job_id)
        await conn.execute(
            f"UPDATE outbox SET status = {_BACK_TO_PENDING}, locked_by = NULL, locked_at = NULL,"
            " attempts = greatest(attempts - 1, 0), run_at = now(), updated_at = now()"
            " WHERE id = $1 AND status = 'running' AND locked_by = $2",
            job_id,
            worker_id,
        )
        await conn.execute(f"SELECT pg_notify('{CHANNEL}', '')")


async def reschedule(conn: Conn, job_id: int, worker_id: str, at: datetime) -> None:
    """Put a job back for later without counting an attempt (its subject moved in time)."""
    async with conn.transaction():
        await conn.execute(_LOCK_JOB_KEY, job_id)
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
    """Jobs whose worker is gone (no connection named `app_prefix` + worker id left) or whose
    lease ran out go back to `pending`, or to `dead` when that was their last attempt."""
    async with conn.transaction():
        # The lock of each keyed orphan's (topic, key), without waiting (a worker's loop runs
        # this): a key whose lock is busy keeps its orphans until a later round.
        busy: list[str] = await conn.fetchval(
            f"""
            SELECT coalesce(array_agg(k.name), '{{}}') FROM (
                SELECT DISTINCT {_lock_name("o.topic", "o.key")} AS name FROM outbox o
                WHERE o.key IS NOT NULL AND {_ORPHAN.format(job="o")}) AS k
            WHERE NOT {try_xact_lock_sql(LockNamespace.OUTBOX, "k.name")}
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
              AND NOT (key IS NOT NULL AND {_lock_name("topic", "key")} = ANY($3::text[]))
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


# The oldest finished jobs first, through the partial index of finished jobs by
# `updated_at`: a seek, however many there are; each row is then deleted where it lies (by
# ctid, checked again). Dead letters stay until someone acts on them.
_PURGE_FINISHED = """
WITH doomed AS MATERIALIZED (
    SELECT ctid FROM outbox
    WHERE status IN ('done', 'cancelled') AND updated_at < now() - make_interval(secs => $1)
    ORDER BY updated_at
    LIMIT $2
)
DELETE FROM outbox o USING doomed d
WHERE o.ctid = d.ctid AND o.status IN ('done', 'cancelled')
  AND o.updated_at < now() - make_interval(secs => $1)
"""


async def purge_finished(conn: Conn, older_than_s: float, limit: int) -> int:
    """Delete up to `limit` jobs finished (done or cancelled) more than `older_than_s` ago;
    returns how many went."""
    status = await conn.execute(_PURGE_FINISHED, older_than_s, limit)
    return int(status.rsplit(" ", 1)[-1])
