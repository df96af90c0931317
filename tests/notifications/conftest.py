"""Fixtures for notification tests: committed promos and users, workers, a webhook sink."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import uvicorn
from sqlalchemy import text
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.core.db import libpq_url
from app.core.settings import Settings
from app.notifications.worker import Worker, WorkerConfig
from tests.helpers import wait_for

ROOT = Path(__file__).resolve().parents[2]
SECRET = "webhook-test-secret"


@dataclass
class Place:
    """A random spot on the globe, far from other tests' users; offsets in metres."""

    lat: float = field(default_factory=lambda: random.uniform(-50, 50))
    lng: float = field(default_factory=lambda: random.uniform(-170, 170))

    def north(self, metres: float) -> tuple[float, float]:
        return self.lat + metres / 111_195.0, self.lng


async def add_users(
    pg: asyncpg.Connection,
    at: tuple[float, float] | None,
    count: int = 1,
    *,
    tags: list[str] | None = None,
    timezone: str = "UTC",
) -> list[uuid.UUID]:
    lat, lng = at if at is not None else (None, None)
    rows = await pg.fetch(
        """
        INSERT INTO users (email, role, lat, lng, tags, timezone)
        SELECT 'n-' || gen_random_uuid() || '@example.com', 'user', $1, $2, $3, $4
        FROM generate_series(1, $5)
        RETURNING id
        """,
        lat,
        lng,
        tags or [],
        timezone,
        count,
    )
    return [r["id"] for r in rows]


async def add_promo(
    pg: asyncpg.Connection,
    place: Place,
    *,
    radius_m: int = 500,
    segment_ids: list[uuid.UUID] | None = None,
    title: str = "Croissant at 1 euro",
    starts_in_s: float = -60,
) -> uuid.UUID:
    promo_id: uuid.UUID = await pg.fetchval(
        """
        WITH s AS (INSERT INTO stores (name, lat, lng) VALUES ('Bakery', $1, $2) RETURNING id),
        pr AS (INSERT INTO products (store_id, name, price_cents)
               SELECT id, 'Croissant', 180 FROM s RETURNING id)
        INSERT INTO promos (product_id, title, promo_price_cents, quantity, starts_at, ends_at,
                            radius_m)
        SELECT id, $3, 100, 5, now() + make_interval(secs => $4),
               now() + make_interval(secs => $4) + interval '1 hour', $5
        FROM pr RETURNING id
        """,
        place.lat,
        place.lng,
        title,
        starts_in_s,
        radius_m,
    )
    for segment_id in segment_ids or []:
        await pg.execute(
            "INSERT INTO promo_segments (promo_id, segment_id) VALUES ($1, $2)",
            promo_id,
            segment_id,
        )
    return promo_id


async def schedule(app: Any, promo_id: uuid.UUID) -> None:
    """What the promos service does on create: schedule the start job at starts_at."""
    from app.promos.events import schedule_started

    async with app.state.db.sessionmaker() as session, session.begin():
        starts_at = await session.scalar(
            text("SELECT starts_at FROM promos WHERE id = :id"), {"id": promo_id}
        )
        await schedule_started(session, promo_id, starts_at)


async def fanout_status(pg: asyncpg.Connection, promo_id: uuid.UUID) -> str | None:
    status: str | None = await pg.fetchval(
        "SELECT status FROM notification_fanouts WHERE promo_id = $1", promo_id
    )
    return status


async def fanout_finished(pg: asyncpg.Connection, promo_id: uuid.UUID) -> str | None:
    """The fan-out's final status, or None while it has not finished."""
    status = await fanout_status(pg, promo_id)
    return status if status in ("done", "cancelled") else None


@pytest.fixture
def worker_config(settings: Settings) -> WorkerConfig:
    url = libpq_url(settings.database_url or "")
    return WorkerConfig(
        database_url=url,
        direct_url=libpq_url(settings.database_direct_url or url),
        statement_cache_size=settings.statement_cache_size,
        concurrency=4,
        poll_seconds=0.2,
        lease_seconds=30,
        shutdown_grace_seconds=5,
        backoff_base_s=0.05,
        backoff_max_s=0.2,
        webhook_timeout_s=5,
    )


RunWorker = Callable[..., Awaitable[Worker]]


@pytest.fixture
async def run_worker(worker_config: WorkerConfig) -> AsyncIterator[RunWorker]:
    """Start in-process workers (each with its own pool and listener); stopped afterwards."""
    running: list[tuple[Worker, asyncio.Task[None]]] = []

    async def start(**overrides: Any) -> Worker:
        worker = Worker(replace(worker_config, **overrides))
        running.append((worker, asyncio.create_task(worker.run())))
        return worker

    yield start
    for worker, _ in running:
        worker.stop()
    for _, task in running:
        await asyncio.wait_for(task, timeout=30)


def spawn_worker(settings: Settings, **env: str) -> subprocess.Popen[bytes]:
    """`python -m app worker` as a real process."""
    environ = {
        **os.environ,
        "DATABASE_URL": settings.database_url or "",
        "DATABASE_DIRECT_URL": "",
        "NOTIFY_WEBHOOK_URL": "",
        "LOG_LEVEL": "WARNING",
        "WORKER_POLL_SECONDS": "0.2",
        "DATA_DIR": str(settings.data_dir),
        **env,
    }
    return subprocess.Popen(
        [sys.executable, "-m", "app", "worker"],
        cwd=ROOT,
        env=environ,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


@dataclass
class Sink:
    """A webhook receiver on 127.0.0.1 that fails `fail_first` calls (or all of them)."""

    url: str = ""
    fail_first: int = 0
    always_fail: bool = False
    calls: list[tuple[int, bytes, dict[str, str]]] = field(default_factory=list)

    def for_promo(self, promo_id: uuid.UUID) -> list[tuple[int, bytes, dict[str, str]]]:
        """Calls about this promo (a worker may also deliver other tests' leftovers)."""
        return [c for c in self.calls if str(promo_id).encode() in c[1]]


@pytest.fixture
async def sink() -> AsyncIterator[Sink]:
    state = Sink()

    async def receive(request: Request) -> Response:
        body = await request.body()
        failing = state.always_fail or len(state.calls) < state.fail_first
        status = 503 if failing else 200
        state.calls.append((status, body, dict(request.headers)))
        return Response(status_code=status)

    app = Starlette(routes=[Route("/hook", receive, methods=["POST"])])
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, lifespan="off", log_level="warning", access_log=False)
    )
    task = asyncio.create_task(server.serve(sockets=[sock]))
    await wait_for(lambda: server.started, timeout=10)
    state.url = f"http://127.0.0.1:{port}/hook"
    yield state
    server.should_exit = True
    with contextlib.suppress(Exception):
        await asyncio.wait_for(task, timeout=10)
    sock.close()
