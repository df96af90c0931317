"""Import jobs, the API's side: store an upload (or a generation's parameters) as a job for
the worker, read jobs, cancel one, stream its error report.

An upload is streamed with COPY into a staging table of its own (`import_staging_<id>`,
unlogged), in the request's transaction together with the job row and its outbox job: the
202 means the whole file is stored and a worker will take it; a failed or interrupted
upload leaves nothing. The worker's side is `import_runner.py`.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterable, AsyncIterator
from datetime import datetime
from typing import Any

import asyncpg
import orjson
from fastapi import Request
from sqlalchemy.ext.asyncio import AsyncSession

from app.books.errors import ImportFinished
from app.books.export import cell
from app.books.import_schemas import ImportJobOut, JobKind, JobState, LineError
from app.books.imports import (
    DATA_LINE,
    INVALID_SELECT,
    TRIMMED,
    CopyFeed,
    copy_source,
    upload_chunks,
)
from app.books.schemas import GenerateIn
from app.core import outbox
from app.core.db import raw_connection
from app.core.idempotency import Idempotency
from app.core.problems import NotFound

TOPIC = "books.import"
MAX_ATTEMPTS = 5
FOREIGN_REASON = "belongs to another book"

COLUMNS = """id, book_id, kind, state, received_bytes, lines_total, lines_done, inserted,
duplicates_in_file, already_present, error_count, errors, detail, created_at, started_at,
finished_at"""


def staging_name(job_id: uuid.UUID) -> str:
    """The job's staging table (a name made of hex digits only: safe to splice in SQL)."""
    return f"import_staging_{job_id.hex}"


def _json(value: Any) -> Any:
    """A jsonb value, decoded whether or not the connection has a codec for it."""
    return orjson.loads(value) if isinstance(value, str | bytes) else value


def job_out(row: asyncpg.Record) -> ImportJobOut:
    state = JobState(row["state"])
    total, done = int(row["lines_total"]), int(row["lines_done"])
    progress = min(done / total, 1.0) if total else 0.0
    if state == JobState.done:
        progress = 1.0
    errors = _json(row["errors"])
    return ImportJobOut(
        id=row["id"],
        book_id=row["book_id"],
        kind=JobKind(row["kind"]),
        state=state,
        received_bytes=row["received_bytes"],
        lines_total=total,
        lines_done=done,
        inserted=row["inserted"],
        duplicates_in_file=row["duplicates_in_file"],
        already_present=row["already_present"],
        error_count=row["error_count"],
        errors=[LineError(**e) for e in errors],
        detail=row["detail"],
        created_at=row["created_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        progress=round(progress, 4),
    )


async def _book_exists(conn: asyncpg.Connection, book_id: uuid.UUID) -> None:
    if not await conn.fetchval("SELECT EXISTS (SELECT 1 FROM books WHERE id = $1)", book_id):
        raise NotFound(f"No book {book_id}.")


async def _schedule(session: AsyncSession, job_id: uuid.UUID) -> None:
    await outbox.schedule(
        session,
        TOPIC,
        str(job_id),
        payload={"import_id": str(job_id)},
        max_attempts=MAX_ATTEMPTS,
    )


async def receive_upload(
    session: AsyncSession,
    request: Request,
    book_id: uuid.UUID,
    actor_id: uuid.UUID,
    idem: Idempotency,
) -> ImportJobOut:
    """Store the uploaded CSV as a job; the caller's transaction commits it whole or not."""
    async with upload_chunks(request) as chunks:
        return await store_upload(session, book_id, actor_id, chunks, idem)


async def store_upload(
    session: AsyncSession,
    book_id: uuid.UUID,
    actor_id: uuid.UUID | None,
    chunks: AsyncIterable[bytes],
    idem: Idempotency | None = None,
) -> ImportJobOut:
    """Store a CSV given as byte chunks as a job, in the caller's transaction."""
    conn = await raw_connection(session)
    await _book_exists(conn, book_id)
    # The upload is one COPY statement, as long as the client takes to send it.
    await conn.execute("SELECT set_config('statement_timeout', '900s', true)")
    job_id: uuid.UUID = await conn.fetchval(
        "INSERT INTO import_jobs (book_id, actor_id, kind) VALUES ($1, $2, 'csv') RETURNING id",
        book_id,
        actor_id,
    )
    staging = staging_name(job_id)
    await conn.execute(
        f"CREATE UNLOGGED TABLE {staging}"
        " (line bigint GENERATED ALWAYS AS IDENTITY, raw text) WITH (autovacuum_enabled = off)"
    )
    feed = CopyFeed()
    status = await conn.copy_to_table(
        staging, source=copy_source(feed, chunks), columns=["raw"], format="text"
    )
    sha256 = feed.sha256.hexdigest()
    if idem is not None:
        await idem.begin(sha256)
    row = await conn.fetchrow(
        f"""
        UPDATE import_jobs SET staging = $2, received_bytes = $3, lines_total = $4,
            file_sha256 = $5, updated_at = now()
        WHERE id = $1 RETURNING {COLUMNS}
        """,
        job_id,
        staging,
        feed.bytes_read,
        int(status.rsplit(" ", 1)[-1]),
        sha256,
    )
    assert row is not None
    await _schedule(session, job_id)
    return job_out(row)


async def start_generation(
    session: AsyncSession, book_id: uuid.UUID, actor_id: uuid.UUID, body: GenerateIn
) -> ImportJobOut:
    """A generation as a job (its pattern was checked by the caller)."""
    conn = await raw_connection(session)
    await _book_exists(conn, book_id)
    params = body.model_dump(mode="json", exclude={"run_async"})
    row = await conn.fetchrow(
        f"""
        INSERT INTO import_jobs (book_id, actor_id, kind, params, lines_total)
        VALUES ($1, $2, 'generate', $3::jsonb, $4) RETURNING {COLUMNS}
        """,
        book_id,
        actor_id,
        orjson.dumps(params).decode(),
        body.count,
    )
    assert row is not None
    await _schedule(session, row["id"])
    return job_out(row)


async def get_job(session: AsyncSession, job_id: uuid.UUID) -> ImportJobOut:
    conn = await raw_connection(session)
    row = await conn.fetchrow(f"SELECT {COLUMNS} FROM import_jobs WHERE id = $1", job_id)
    if row is None:
        raise NotFound(f"No import {job_id}.")
    return job_out(row)


async def list_jobs(
    session: AsyncSession,
    book_id: uuid.UUID,
    limit: int,
    before: tuple[datetime, uuid.UUID] | None,
) -> list[ImportJobOut]:
    """The book's jobs, newest first, `limit` of them after the keyset `before`."""
    conn = await raw_connection(session)
    await _book_exists(conn, book_id)
    at, last = before if before is not None else (None, None)
    rows = await conn.fetch(
        f"""
        SELECT {COLUMNS} FROM import_jobs
        WHERE book_id = $1 AND ($2::timestamptz IS NULL OR (created_at, id) < ($2, $3))
        ORDER BY created_at DESC, id DESC LIMIT $4
        """,
        book_id,
        at,
        last,
        limit,
    )
    return [job_out(r) for r in rows]


async def cancel(session: AsyncSession, job_id: uuid.UUID) -> ImportJobOut:
    """Cancel a job that has not finished: the worker stops at its next step and stores
    nothing. Cancelling a cancelled job is harmless; a done or failed one is 409."""
    conn = await raw_connection(session)
    row = await conn.fetchrow(
        f"""
        UPDATE import_jobs SET state = 'cancelled', finished_at = now(), updated_at = now(),
            detail = 'cancelled'
        WHERE id = $1 AND state NOT IN ('done', 'failed', 'cancelled') RETURNING {COLUMNS}
        """,
        job_id,
    )
    if row is not None:
        # Wake a worker: a job waiting its turn (queued) drops its staging at once.
        await conn.execute(f"SELECT pg_notify('{outbox.CHANNEL}', '')")
        return job_out(row)
    job = await get_job(session, job_id)
    if job.state != JobState.cancelled:
        raise ImportFinished(
            f"Import {job_id} is {job.state.value}; it can no longer be cancelled."
        )
    return job


# --- the error report ---------------------------------------------------------------------

ERRORS_HEADER = b"line,code,reason\r\n"
_BATCH = 5000


def errors_sql(staging: str, *, foreign: bool) -> str:
    """Every bad line of a staging table, by line: the invalid ones, and with `foreign` the
    codes another book holds ($1 = the job's book)."""
    invalid = INVALID_SELECT.format(table=staging)
    if not foreign:
        return f"{invalid} ORDER BY line"
    return f"""
    {invalid}
    UNION ALL
    SELECT s.line, s.code, '{FOREIGN_REASON}'
    FROM (SELECT line, upper({TRIMMED}) AS code FROM {staging} WHERE {DATA_LINE}) AS s
    JOIN codes c ON c.code = s.code
    WHERE c.book_id <> $1
    ORDER BY line
    """


async def error_report(session: AsyncSession, job_id: uuid.UUID) -> AsyncIterator[bytes]:
    """The job's bad lines as CSV `line,code,reason`, read from its staging table through a
    server-side cursor (the first 100 from the job itself once the staging is gone)."""
    conn = await raw_connection(session)
    row = await conn.fetchrow(
        "SELECT book_id, state, staging, errors, params FROM import_jobs WHERE id = $1", job_id
    )
    if row is None:
        raise NotFound(f"No import {job_id}.")

    async def lines() -> AsyncIterator[bytes]:
        yield ERRORS_HEADER
        if row["state"] != JobState.failed:
            return
        params: dict[str, Any] = _json(row["params"])
        failed_on = params.get("failed_on")
        if row["staging"] is None or failed_on not in ("invalid", "foreign"):
            errors = _json(row["errors"])
            yield _csv([(e["line"], e["code"], e["reason"]) for e in errors])
            return
        sql = errors_sql(row["staging"], foreign=failed_on == "foreign")
        args = (row["book_id"],) if failed_on == "foreign" else ()
        cursor = await conn.cursor(sql, *args)
        while batch := await cursor.fetch(_BATCH):
            yield _csv([(r["line"], r["code"], r["reason"]) for r in batch])

    return lines()


def _csv(rows: list[tuple[int, str, str]]) -> bytes:
    return "".join(
        f"{line},{cell(code)},{cell(reason)}\r\n" for line, code, reason in rows
    ).encode()
