"""Command line: `python -m app serve | migrate | create-admin | check | import-codes | worker`."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from typing import Annotated, Any

import typer

from app.books.cli import import_codes
from app.core.embedded import resolve_database
from app.core.settings import Settings
from app.notifications.cli import worker

cli = typer.Typer(
    no_args_is_help=True, add_completion=False, help=__doc__, pretty_exceptions_enable=False
)


def _migrate(url: str) -> None:
    from app.core.migrations import upgrade_to_head

    upgrade_to_head(url)


async def _ensure_admin(settings: Settings, url: str, email: str, password: str) -> bool:
    from app.auth.service import ensure_admin
    from app.core.db import Database

    db = Database.from_settings(settings, url)
    try:
        async with db.sessionmaker() as session, session.begin():
            _, created = await ensure_admin(session, email, password)
        return created
    finally:
        await db.dispose()


def _exit_on_sigterm() -> None:
    """uvicorn answers SIGTERM with a graceful shutdown, then raises the signal again with
    the handler it found. Left to the default action, that kills the process on the spot,
    skipping `atexit`, where the embedded PostgreSQL is stopped: it would outlive the
    service. With this handler instead, it exits normally (status 143, as for SIGTERM)."""

    def leave(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, leave)


@cli.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (HOST)")] = None,
    port: Annotated[int | None, typer.Option(help="Port (PORT)")] = None,
    workers: Annotated[int | None, typer.Option(help="Worker processes (WORKERS)")] = None,
) -> None:
    """Start the embedded database if needed, migrate once, then serve with uvicorn."""
    import uvicorn

    from app.core.metrics_processes import metrics_directory

    settings = Settings()
    _exit_on_sigterm()
    server, url = resolve_database(settings)
    _migrate(url)
    if settings.admin_email and settings.admin_password:
        created = asyncio.run(
            _ensure_admin(settings, url, settings.admin_email, settings.admin_password)
        )
        typer.echo(f"admin {settings.admin_email} {'created' if created else 'present'}", err=True)
    os.environ["DATABASE_URL"] = url
    settings.resolved_jwt_secret()  # generate once here so every worker shares it
    processes = workers or settings.workers
    # Several processes: their metrics meet in a fresh directory (app/core/metrics.py).
    with metrics_directory(processes):
        uvicorn.run(
            "app.main:create_app",
            factory=True,
            host=host or settings.host,
            port=port or settings.port,
            workers=processes,
            loop="uvloop",
            http="httptools",
            proxy_headers=True,
            access_log=False,
            timeout_graceful_shutdown=20,
        )
    del server  # keeps the embedded server referenced until uvicorn returns


@cli.command()
def migrate() -> None:
    """Upgrade the database schema to the latest revision."""
    settings = Settings()
    _, url = resolve_database(settings)
    _migrate(url)
    typer.echo("migrated to head")


@cli.command("create-admin")
def create_admin(
    email: str,
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from standard input")
    ] = False,
) -> None:
    """Create an admin account, or promote an existing one."""
    if password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    if len(password) < 8:
        typer.echo("password must have at least 8 characters", err=True)
        raise typer.Exit(2)
    settings = Settings()
    _, url = resolve_database(settings)
    _migrate(url)
    created = asyncio.run(_ensure_admin(settings, url, email, password))
    typer.echo(f"admin {email} {'created' if created else 'promoted or already admin'}")


@cli.command()
def check() -> None:
    """Run the invariant checks; prints offending rows and exits 1 on any violation."""
    import asyncpg

    from app.check import run_checks, violations
    from app.core.db import libpq_url

    settings = Settings()
    _, url = resolve_database(settings)

    async def run() -> list[Any]:
        conn = await asyncpg.connect(libpq_url(url))
        try:
            return await run_checks(conn)
        finally:
            await conn.close()

    outcomes = asyncio.run(run())
    for outcome in outcomes:
        state = "skip" if outcome.skipped else ("ok" if outcome.ok else "FAIL")
        typer.echo(f"{state:4}  {outcome.check.name}: {outcome.check.promise}")
        for row in outcome.rows:
            typer.echo(f"      {row}")
    bad = violations(outcomes)
    typer.echo(f"{len(outcomes) - len(bad)} passed, {len(bad)} failed")
    if bad:
        raise typer.Exit(1)


# Every command is registered here; a domain's commands are plain functions in its own
# `cli.py`, which never imports this module.
cli.command("import-codes")(import_codes)
cli.command("worker")(worker)


def main() -> None:
    cli()
