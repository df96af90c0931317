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
import enum
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import orjson
import structlog
from asyncpg.pool import PoolConnectionProxy

from app.books import generate
from app.books.import_jobs import FOREIGN_REASON, staging_name
from app.books.import_schemas import JobState
from app.books.imports import DATA_LINE, INVALID_SELECT, MAX_REPORTED, TRIMMED
from app.books.schemas import GenerateIn
from app.core import outbox
from app.core.locking import LockNamespace, try_xact_lock_sql
from app.core.problems import ProblemError

log = structlog.get_logger(__name__)

Conn = asyncpg.Connection | PoolConnectionProxy
BUSY_RETRY_S = 1.0
_LEASE_EVERY_S = 5.0


class Outcome(enum.Enum):
    FINISHED = "finished"  # done, failed or cancelled: the outbox job is complete
    BUSY = "busy"  # another job of the book runs: try again in BUSY_RETRY_S
    RELEASED = "released"  # the worker is stopping: hand the job back
    LOST = "lost"  # another worker took the job over


class _Stop(Exception):
    def __init__(self, outcome: Outcome, why: str) -> None:
        super().__init__(why)
        self.outcome = outcome


class _Failed(Exception):
    """The job's input is refused: nothing stored, the job `failed` with these lines."""

    def __init__(
        self,
        detail: str,
        errors: list[dict[str, Any]] | None = None,
        count: int = 0,
        failed_on: str | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors or []
        self.count = count
        self.failed_on = failed_on


@dataclass
class _Side:
    """The autocommit connection: job state, progress, lease. Used by the job and by its
    lease keeper, one statement at a time."""

    conn: Conn
    job_id: uuid.UUID
    outbox_id: int
    worker_id: str
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    lost: bool = False

    async def execute(self, sql: str, *args: Any) -> str:
        async with self.lock:
            status: str = await self.conn.execute(sql, *args)
            return status

    async def fetchrow(self, sql: str, *args: Any) -> asyncpg.Record | None:
        async with self.lock:
            return await self.conn.fetchrow(sql, *args)

    async def renew(self) -> None:
        async with self.lock:
            if not await outbox.renew(self.conn, self.outbox_id, self.worker_id):
                self.lost = True

    async def enter(self, state: JobState) -> None:
        """Move the job to `state` (counters reset on the way in); a cancelled job stops."""
        reset = state == JobState.validating
        row = await self.fetchrow(
            f"""
            UPDATE import_jobs SET state = $2, updated_at = now(),
                started_at = CASE WHEN $3 THEN clock_timestamp() ELSE started_at END
                {
                ", lines_done = 0, inserted = 0, duplicates_in_file = 0, already_present = 0"
                if reset
                else ""
            }
            WHERE id = $1 AND state NOT IN ('done', 'failed', 'cancelled') RETURNING id
            """,
            self.job_id,
            state.value,
            reset,
        )
        if row is None:
            raise _Stop(Outcome.FINISHED, "cancelled")

    async def progress(self, lines_done: int, inserted: int) -> None:
        """Publish progress; stop when the job was cancelled or taken over meanwhile."""
        if self.lost:
            raise _Stop(Outcome.LOST, "lease lost")
        row = await self.fetchrow(
            "UPDATE import_jobs SET lines_done = $2, inserted = $3, updated_at = now()"
            " WHERE id = $1 AND state = 'inserting' RETURNING id",
            self.job_id,
            lines_done,
            inserted,
        )
        if row is None:
            raise _Stop(Outcome.FINISHED, "cancelled")


async def _keep_lease(side: _Side) -> None:
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
        side = _Side(side_conn, import_id, outbox_id, worker_id)
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
    side: _Side,
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
                raise _Stop(Outcome.BUSY if row else Outcome.FINISHED, "book busy")
            await side.enter(JobState.validating)
            if job["kind"] == "csv":
                totals = await _store_csv(work, side, job, batch_size, stopping)
            else:
                totals = await _store_generated(work, side, job, stopping)
            await _finish(work, side, job, totals)
    except _Stop as stop:
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
    except _Failed as failed:
        await _fail(side, failed)
        return Outcome.FINISHED
    await _drop_staging(side, job["staging"])
    log.info("import_job_done", job=str(side.job_id))
    return Outcome.FINISHED


@dataclass(frozen=True)
class _Totals:
    received: int
    inserted: int
    duplicates_in_file: int
    already_present: int


# --- CSV ----------------------------------------------------------------------------------

# The file's distinct codes with their first line and how many lines carry them; a unique
# index orders the batches by code, so concurrent writers meet common codes in one order.
_DISTINCT = """
CREATE TEMP TABLE job_codes ON COMMIT DROP AS
SELECT upper({trimmed}) AS code, min(line) AS line, count(*) AS n
FROM {staging} WHERE {data_line}
GROUP BY 1
"""

_OVERLAP = """
SELECT count(*) FILTER (WHERE c.book_id = $1) AS present,
       coalesce(sum(i.n) FILTER (WHERE c.book_id <> $1), 0) AS foreign_lines
FROM job_codes i JOIN codes c ON c.code = i.code
"""

_FOREIGN = f"""
SELECT i.line, i.code, '{FOREIGN_REASON}' AS reason FROM job_codes i JOIN codes c ON c.code = i.code
WHERE c.book_id <> $1 ORDER BY i.line LIMIT {MAX_REPORTED}
"""

_BATCH = """
WITH b AS MATERIALIZED (
    SELECT code, n FROM job_codes WHERE code > $2 ORDER BY code LIMIT $3
), ins AS (
    INSERT INTO codes (book_id, code) SELECT $1, code FROM b ORDER BY code {conflict}
    RETURNING 1
)
SELECT (SELECT max(code) FROM b) AS last, (SELECT count(*) FROM b) AS taken,
       (SELECT coalesce(sum(n), 0) FROM b) AS lines, (SELECT count(*) FROM ins) AS inserted
"""
_BATCH_PLAIN = _BATCH.format(conflict="")
_BATCH_SKIPPING = _BATCH.format(conflict="ON CONFLICT (code) DO NOTHING")


async def _store_csv(
    work: Conn, side: _Side, job: asyncpg.Record, batch_size: int, stopping: Callable[[], bool]
) -> _Totals:
    staging, book_id = job["staging"], job["book_id"]
    if staging is None or not await work.fetchval("SELECT to_regclass($1) IS NOT NULL", staging):
        raise _Failed("The uploaded file is no longer stored; upload it again.")
    stored = await work.fetchval(f"SELECT count(*) FROM {staging}")
    if stored != job["lines_total"]:
        # An unlogged table is emptied by a database crash: the upload is gone.
        raise _Failed("The uploaded file was lost by a database restart; upload it again.")
    invalid = await work.fetch(
        f"SELECT *, count(*) OVER () AS total FROM ({INVALID_SELECT.format(table=staging)}) e"
        f" ORDER BY line LIMIT {MAX_REPORTED}"
    )
    if invalid:
        total = int(invalid[0]["total"])
        raise _Failed(
            f"{total} invalid line(s), the first at line {invalid[0]['line']}; nothing stored.",
            [{k: r[k] for k in ("line", "code", "reason")} for r in invalid],
            total,
            "invalid",
        )
    await work.execute("DROP TABLE IF EXISTS pg_temp.job_codes")
    await work.execute(_DISTINCT.format(trimmed=TRIMMED, staging=staging, data_line=DATA_LINE))
    await work.execute("CREATE UNIQUE INDEX ON job_codes (code)")
    await work.execute("ANALYZE job_codes")
    totals = await work.fetchrow(
        "SELECT coalesce(sum(n), 0) AS received, count(*) AS distinct_ FROM job_codes"
    )
    assert totals is not None
    received, distinct = int(totals["received"]), int(totals["distinct_"])
    present = await _check_foreign(work, book_id)
    await side.enter(JobState.inserting)
    last, lines, inserted, raced = "", 0, 0, False
    while True:
        if stopping():
            raise _Stop(Outcome.RELEASED, "worker stopping")
        row, raced = await _batch(work, book_id, last, batch_size, skipping=raced or present > 0)
        if row["taken"] == 0:
            break
        last = row["last"]
        lines += int(row["lines"])
        inserted += int(row["inserted"])
        await side.progress(lines, inserted)
        if row["taken"] < batch_size:
            break
    if inserted + present < distinct:
        # Codes another writer stored meanwhile were skipped: those of another book refuse
        # the file, as if they had been there from the start.
        await _check_foreign(work, book_id)
    return _Totals(received, inserted, received - distinct, distinct - inserted)


async def _check_foreign(work: Conn, book_id: uuid.UUID) -> int:
    """Codes of the file this book already holds; codes of another book fail the job."""
    overlap = await work.fetchrow(_OVERLAP, book_id)
    assert overlap is not None
    if overlap["foreign_lines"]:
        rows = await work.fetch(_FOREIGN, book_id)
        count = int(overlap["foreign_lines"])
        raise _Failed(
            f"{count} line(s) hold codes of another book; nothing stored.",
            [dict(r) for r in rows],
            count,
            "foreign",
        )
    return int(overlap["present"])


async def _batch(
    work: Conn, book_id: uuid.UUID, last: str, size: int, *, skipping: bool
) -> tuple[asyncpg.Record, bool]:
    """One batch of inserts; returns it and whether later batches must skip existing codes.
    The plain insert runs in a savepoint: when it meets a code another writer committed
    meanwhile, it is undone and runs again skipping what exists."""
    if not skipping:
        try:
            async with work.transaction():
                row = await work.fetchrow(_BATCH_PLAIN, book_id, last, size)
            assert row is not None
            return row, False
        except asyncpg.UniqueViolationError:
            pass
    row = await work.fetchrow(_BATCH_SKIPPING, book_id, last, size)
    assert row is not None
    return row, True


# --- generation ---------------------------------------------------------------------------


async def _store_generated(
    work: Conn, side: _Side, job: asyncpg.Record, stopping: Callable[[], bool]
) -> _Totals:
    params = job["params"]
    body = GenerateIn.model_validate(orjson.loads(params) if isinstance(params, str) else params)
    try:
        slots = generate.checked_slots(body)
    except ProblemError as exc:
        raise _Failed(exc.detail) from exc
    await side.enter(JobState.inserting)

    async def after_round(inserted: int) -> None:
        if stopping():
            raise _Stop(Outcome.RELEASED, "worker stopping")
        await side.progress(inserted, inserted)

    try:
        inserted = await generate.generate_into(
            work, job["book_id"], slots, body.count, after_round
        )
    except ProblemError as exc:
        raise _Failed(exc.detail) from exc
    return _Totals(inserted, inserted, 0, 0)


# --- endings ------------------------------------------------------------------------------

_RECORD = """
INSERT INTO imports
    (book_id, actor_id, received, inserted, duplicates_in_file, already_present, file_sha256)
VALUES ($1, $2, $3, $4, $5, $6, $7)
"""


async def _finish(work: Conn, side: _Side, job: asyncpg.Record, totals: _Totals) -> None:
    """Flip the job to `done` in the work transaction: its codes and its state become
    visible together. A cancel that got there first wins (nothing is stored)."""
    if side.lost:
        raise _Stop(Outcome.LOST, "lease lost")
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
        raise _Stop(Outcome.FINISHED, "cancelled")
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


async def _fail(side: _Side, failed: _Failed) -> None:
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


async def _drop_staging(side: _Side, staging: str | None) -> None:
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
