"""Import jobs, the worker's side: validate a staged upload (or draw a generation's codes)
and store its codes, all or nothing, while the book keeps serving.

One job runs on two connections. The work connection holds one transaction from the first
check to the commit: the book's import lock (`pg_try_advisory_xact_lock`: one job of a book
at a time; a job that does not get it is `queued` and tried again shortly), validation,
the insert in batches of `batch_size` codes, and the flip of the job to `done`. Nothing of a
job is visible before that commit, so an assign never meets a code of an unfinished job, and
a worker killed at any point leaves no half-stored book: its transaction rolls back, the
outbox hands the job to another worker (or the same one later), and it starts again from
the staging table. The side connection autocommits what others must see meanwhile: the
state, the progress counters after each batch, the outbox lease; it is also where a cancel
is noticed (`state` no longer `inserting`), which rolls the work back.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable

import asyncpg
import orjson
import structlog

from app.books.import_jobs import staging_name
from app.books.import_schemas import JobState
from app.books.import_side import Conn, Failed, Outcome, Side, Stop, Totals
from app.books.import_store import store_csv, store_generated
from app.core.locking import LockNamespace, try_xact_lock_sql

__all__ = ["BUSY_RETRY_S", "Outcome", "mark_failed", "purge_finished", "run"]

log = structlog.get_logger(__name__)

BUSY_RETRY_S = 1.0
_LEASE_EVERY_S = 5.0


async def _keep_lease(side: Side) -> None:
    while True:
        await asyncio.sleep(_LEASE_EVERY_S)
        with contextlib.suppress(asyncpg.PostgresError, OSError, asyncpg.InterfaceError):
            await side.renew()


async def run(
    pool: asyncpg.Pool,
    import_id: uuid.UUID,
    outbox_id: int,
    worker_id: str,
    *,
    batch_size: int,
    stopping: Callable[[], bool],
) -> Outcome:
    """Run one import job to its end (or hand it back); safe to run again after any crash."""
    async with pool.acquire() as side_conn:
        side = Side(side_conn, import_id, outbox_id, worker_id)
        job = await side.fetchrow(
            "SELECT book_id, actor_id, kind, state, staging, params, lines_total, file_sha256"
            " FROM import_jobs WHERE id = $1",
            import_id,
        )
        if job is None:
            return Outcome.FINISHED  # purged
        if job["state"] in (JobState.done, JobState.failed, JobState.cancelled):
            if job["state"] == JobState.cancelled:
                await _drop_staging(side, job["staging"])
            return Outcome.FINISHED
        keeper = asyncio.create_task(_keep_lease(side))
        try:
            async with pool.acquire() as work:
                return await _attempt(work, side, job, batch_size, stopping)
        finally:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper


async def _attempt(
    work: Conn,
    side: Side,
    job: asyncpg.Record,
    batch_size: int,
    stopping: Callable[[], bool],
) -> Outcome:
    try:
        async with work.transaction():
            await work.execute(
                "SELECT set_config('statement_timeout', '0', true),"
                " set_config('lock_timeout', '600s', true),"
                " set_config('work_mem', '128MB', true)"
            )
            locked = await work.fetchval(
                f"SELECT {try_xact_lock_sql(LockNamespace.IMPORT_BOOK, '$1::text')}",
                str(job["book_id"]),
            )
            if not locked:
                row = await side.fetchrow(
                    "UPDATE import_jobs SET state = 'queued', updated_at = now()"
                    " WHERE id = $1 AND state NOT IN ('done', 'failed', 'cancelled')"
                    " RETURNING id",
                    side.job_id,
                )
                raise Stop(Outcome.BUSY if row else Outcome.FINISHED, "book busy")
            await side.enter(JobState.validating)
            if job["kind"] == "csv":
                totals = await store_csv(work, side, job, batch_size, stopping)
            else:
                totals = await store_generated(work, side, job, stopping)
            await _finish(work, side, job, totals)
    except Stop as stop:
        if stop.outcome == Outcome.FINISHED:  # cancelled: the rollback undid everything
            await _drop_staging(side, job["staging"])
        elif stop.outcome == Outcome.RELEASED:
            await side.execute(
                "UPDATE import_jobs SET state = 'received', updated_at = now()"
                " WHERE id = $1 AND state NOT IN ('done', 'failed', 'cancelled')",
                side.job_id,
            )
        log.info("import_job_stopped", job=str(side.job_id), why=str(stop))
        return stop.outcome
    except Failed as failed:
        await _fail(side, failed)
        return Outcome.FINISHED
    await _drop_staging(side, job["staging"])
    log.info("import_job_done", job=str(side.job_id))
    return Outcome.FINISHED


# --- endings ------------------------------------------------------------------------------

_RECORD = """
INSERT INTO imports
    (book_id, actor_id, received, inserted, duplicates_in_file, already_present, file_sha256)
VALUES ($1, $2, $3, $4, $5, $6, $7)
"""


async def _finish(work: Conn, side: Side, job: asyncpg.Record, totals: Totals) -> None:
    """Flip the job to `done` in the work transaction: its codes and its state become
    visible together. A cancel that got there first wins (nothing is stored)."""
    if side.lost:
        raise Stop(Outcome.LOST, "lease lost")
    done = await work.fetchval(
        """
        UPDATE import_jobs SET state = 'done', finished_at = clock_timestamp(),
            updated_at = clock_timestamp(),
            lines_done = lines_total, inserted = $2, duplicates_in_file = $3,
            already_present = $4, detail = NULL
        WHERE id = $1 AND state = 'inserting' RETURNING true
        """,
        side.job_id,
        totals.inserted,
        totals.duplicates_in_file,
        totals.already_present,
    )
    if not done:
        raise Stop(Outcome.FINISHED, "cancelled")
    if job["kind"] == "csv":
        await work.execute(
            _RECORD,
            job["book_id"],
            job["actor_id"],
            totals.received,
            totals.inserted,
            totals.duplicates_in_file,
            totals.already_present,
            job["file_sha256"],
        )


async def _fail(side: Side, failed: Failed) -> None:
    await side.execute(
        """
        UPDATE import_jobs SET state = 'failed', finished_at = now(), updated_at = now(),
            detail = $2, errors = $3::jsonb, error_count = $4, lines_done = 0, inserted = 0,
            params = params || jsonb_build_object('failed_on', $5::text)
        WHERE id = $1 AND state NOT IN ('done', 'failed', 'cancelled')
        """,
        side.job_id,
        failed.detail,
        orjson.dumps(failed.errors).decode(),
        failed.count,
        failed.failed_on,
    )
    log.info("import_job_failed", job=str(side.job_id), detail=failed.detail)


async def mark_failed(conn: Conn, import_id: uuid.UUID, detail: str) -> None:
    """The job's last attempt ended in an error: fail it rather than leave it running."""
    await conn.execute(
        "UPDATE import_jobs SET state = 'failed', finished_at = now(), updated_at = now(),"
        " detail = left($2, 500) WHERE id = $1 AND state NOT IN ('done', 'failed', 'cancelled')",
        import_id,
        detail,
    )


async def _drop_staging(side: Side, staging: str | None) -> None:
    if staging is None:
        return
    await side.execute(f"DROP TABLE IF EXISTS {staging}")
    await side.execute("UPDATE import_jobs SET staging = NULL WHERE id = $1", side.job_id)


# --- retention ----------------------------------------------------------------------------


async def purge_finished(conn: Conn, older_than_s: float, limit: int) -> int:
    """Delete up to `limit` jobs finished more than `older_than_s` ago, with their staging
    tables (a failed job keeps its staging until then, for the error report)."""
    rows = await conn.fetch(
        "SELECT id, staging FROM import_jobs"
        " WHERE finished_at < now() - make_interval(secs => $1) ORDER BY finished_at LIMIT $2",
        older_than_s,
        limit,
    )
    purged = 0
    for row in rows:
        try:
            async with conn.transaction():
                await conn.execute("SET LOCAL lock_timeout = '1s'")
                if row["staging"] is not None:
                    await conn.execute(f"DROP TABLE IF EXISTS {staging_name(row['id'])}")
                await conn.execute("DELETE FROM import_jobs WHERE id = $1", row["id"])
        except asyncpg.LockNotAvailableError:
            continue  # a report being downloaded holds the table: next round
        purged += 1
    return purged
