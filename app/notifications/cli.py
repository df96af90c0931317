"""`python -m app worker` (registered by `app/cli.py`): the notifications worker as its own
process; any number may run."""

from __future__ import annotations

import asyncio
import os
from typing import Annotated

import typer

from app.core.embedded import resolve_database


def worker(
    concurrency: Annotated[
        int | None, typer.Option(help="Jobs run at once (WORKER_CONCURRENCY)")
    ] = None,
    metrics_port: Annotated[
        int | None, typer.Option(help="Serve Prometheus /metrics on this port")
    ] = None,
) -> None:
    """Run the worker (promo fan-out, webhook delivery, code imports) until SIGTERM or SIGINT."""
    from app.core import tracing
    from app.core.logging import configure_logging
    from app.core.settings import Environment, Settings
    from app.notifications.worker import WorkerConfig, run_until_signalled

    settings = Settings()
    json_logs = (
        settings.log_json if settings.log_json is not None else settings.env is not Environment.dev
    )
    configure_logging(settings.log_level, json=json_logs)
    tracing.configure(settings.otel_enabled)
    server, url = resolve_database(settings)
    os.environ["DATABASE_URL"] = url
    settings = Settings(database_url=url, database_direct_url=settings.database_direct_url)
    tuning = settings.notifications
    if concurrency is not None:
        tuning.worker_concurrency = concurrency
    if metrics_port is not None:
        from prometheus_client import start_http_server

        from app.core.metrics import exposition_registry

        start_http_server(metrics_port, registry=exposition_registry())
    asyncio.run(run_until_signalled(WorkerConfig.from_settings(settings, tuning)))
    del server
