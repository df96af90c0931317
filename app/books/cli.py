"""`python -m app import-codes BOOK_ID FILE`: load a big CSV straight into a book, with a
progress bar. Same rules as the upload endpoint (all or nothing, per-line errors)."""

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
    Progress,
    TaskID,
    TimeElapsedColumn,
    TransferSpeedColumn,
)

from app.core.embedded import resolve_database
from app.core.settings import Settings

_CHUNK = 1 << 20


async def _chunks(fh: BinaryIO, progress: Progress, task: TaskID) -> AsyncIterator[bytes]:
    while chunk := await anyio.to_thread.run_sync(fh.read, _CHUNK):
        progress.update(task, advance=len(chunk))
        yield chunk


async def _import(settings: Settings, url: str, book_id: uuid.UUID, path: Path) -> int:
    from app.books.imports import import_chunks
    from app.core.db import Database, apply_timeouts
    from app.core.problems import ProblemError

    db = Database.from_settings(settings, url)
    size = (await anyio.Path(path).stat()).st_size
    columns = (
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeElapsedColumn(),
    )
    try:
        with path.open("rb") as fh, Progress(*columns, transient=False) as progress:
            task = progress.add_task("importing", total=size)
            try:
                async with db.sessionmaker() as session, session.begin():
                    await apply_timeouts(session, db)
                    out = await import_chunks(session, book_id, None, _chunks(fh, progress, task))
                    progress.update(task, description="committing")
            except ProblemError as exc:
                progress.stop()
                typer.echo(f"{exc.slug}: {exc.detail}", err=True)
                for key in ("errors", "codes"):
                    for item in exc.extra.get(key, [])[:20]:
                        typer.echo(f"  {orjson.dumps(item).decode()}", err=True)
                return 1
            progress.update(task, description="done")
        typer.echo(orjson.dumps(out.model_dump()).decode())
        return 0
    finally:
        await db.dispose()


def import_codes(
    book_id: Annotated[uuid.UUID, typer.Argument(help="The book to fill")],
    file: Annotated[
        Path, typer.Argument(exists=True, dir_okay=False, readable=True, help="CSV file")
    ],
) -> None:
    """Import codes from a CSV file into a book (all or nothing)."""
    settings = Settings()
    _server, url = resolve_database(settings)
    code = asyncio.run(_import(settings, url, book_id, file))
    raise typer.Exit(code)
