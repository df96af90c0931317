"""`python -m app import-codes BOOK_ID FILE`: load a big CSV into a book as an import job,
with progress bars: the upload, then the job as a worker runs it (`python -m app worker`, or
the API's own worker). Same rules as the upload endpoint (all or nothing, per-line errors)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, BinaryIO

import anyio
import orjson
import typer
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TimeElapsedColumn,
    TransferSpeedColumn,
)

from app.books.import_schemas import ImportJobOut
from app.core.embedded import resolve_database
from app.core.settings import Settings

_CHUNK = 1 << 20
_POLL_S = 0.5
_NO_WORKER_HINT_S = 10.0


async def _chunks(fh: BinaryIO, progress: Progress, task: TaskID) -> AsyncIterator[bytes]:
    while chunk := await anyio.to_thread.run_sync(fh.read, _CHUNK):
        progress.update(task, advance=len(chunk))
        yield chunk


async def _import(
    settings: Settings, url: str, book_id: uuid.UUID, path: Path, *, wait: bool = True
) -> int:
    from app.books import import_jobs
    from app.books.import_schemas import FINISHED, JobState
    from app.core.db import Database, apply_timeouts
    from app.core.problems import ProblemError

    db = Database.from_settings(settings, url)
    size = (await anyio.Path(path).stat()).st_size
    try:
        with (
            path.open("rb") as fh,
            Progress(
                "[progress.description]{task.description}",
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeElapsedColumn(),
            ) as progress,
        ):
            task = progress.add_task("uploading", total=size)
            try:
                async with db.sessionmaker() as session, session.begin():
                    await apply_timeouts(session, db)
                    job = await import_jobs.store_upload(
                        session, book_id, None, _chunks(fh, progress, task)
                    )
            except ProblemError as exc:
                progress.stop()
                typer.echo(f"{exc.slug}: {exc.detail}", err=True)
                return 1
            progress.update(task, description="stored")
        typer.echo(f"import {job.id}: {job.lines_total} lines stored")
        if not wait:
            return 0
        with Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
        ) as progress:
            task = progress.add_task(job.state.value, total=job.lines_total or 1)
            waited = 0.0
            while job.state not in FINISHED:
                await asyncio.sleep(_POLL_S)
                waited += _POLL_S
                async with db.sessionmaker() as session, session.begin():
                    job = await import_jobs.get_job(session, job.id)
                description = job.state.value
                if job.state == JobState.received and waited >= _NO_WORKER_HINT_S:
                    description = "waiting for a worker (python -m app worker)"
                progress.update(task, completed=job.lines_done, description=description)
            progress.update(task, completed=job.lines_done)
        return _report(job)
    finally:
        await db.dispose()


def _report(job: ImportJobOut) -> int:
    """Print the job's outcome: counters on success, the first bad lines on failure."""
    out = job.model_dump(
        mode="json",
        include={"id", "state", "inserted", "duplicates_in_file", "already_present", "detail"},
    )
    if job.state.value == "done":
        typer.echo(orjson.dumps(out).decode())
        return 0
    typer.echo(f"{job.state.value}: {job.detail}", err=True)
    for error in job.errors[:20]:
        typer.echo(f"  {orjson.dumps(error.model_dump()).decode()}", err=True)
    return 1


def import_codes(
    book_id: Annotated[uuid.UUID, typer.Argument(help="The book to fill")],
    file: Annotated[
        Path, typer.Argument(exists=True, dir_okay=False, readable=True, help="CSV file")
    ],
    wait: Annotated[
        bool, typer.Option(help="Watch the job until it ends (a worker runs it)")
    ] = True,
) -> None:
    """Import codes from a CSV file into a book as a job (all or nothing)."""
    settings = Settings()
    _server, url = resolve_database(settings)
    code = asyncio.run(_import(settings, url, book_id, file, wait=wait))
    raise typer.Exit(code)
