"""What the steps of an import job share: how a job ends (`Outcome`, `Stop`, `Failed`), its
side connection (`Side`: state, progress, lease) and its counts (`Totals`)."""

from __future__ import annotations

import asyncio
import enum
import uuid
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from app.books.import_schemas import JobState
from app.core import outbox

Conn = asyncpg.Connection | PoolConnectionProxy


class Outcome(enum.Enum):
    FINISHED = "finished"  # done, failed or cancelled: the outbox job is complete
    BUSY = "busy"  # another job of the book runs: try again in BUSY_RETRY_S
    RELEASED = "released"  # the worker is stopping: hand the job back
    LOST = "lost"  # another worker took the job over


class Stop(Exception):
    def __init__(self, outcome: Outcome, why: str) -> None:
        super().__init__(why)
        self.outcome = outcome


class Failed(Exception):
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
class Side:
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
            raise Stop(Outcome.FINISHED, "cancelled")

    async def progress(self, lines_done: int, inserted: int) -> None:
        """Publish progress; stop when the job was cancelled or taken over meanwhile."""
        if self.lost:
            raise Stop(Outcome.LOST, "lease lost")
        row = await self.fetchrow(
            "UPDATE import_jobs SET lines_done = $2, inserted = $3, updated_at = now()"
            " WHERE id = $1 AND state = 'inserting' RETURNING id",
            self.job_id,
            lines_done,
            inserted,
        )
        if row is None:
            raise Stop(Outcome.FINISHED, "cancelled")


@dataclass(frozen=True)
class Totals:
    received: int
    inserted: int
    duplicates_in_file: int
    already_present: int
