"""Helpers shared by tests: a started app, API users with tokens, problem assertions, and
polling for a state (a condition, a session blocked on a lock) instead of sleeping until it
has surely happened."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.services import STATE_KEY, Services
from app.core.security import Role
from tests.polling import poll, wait_until

__all__ = ["wait_until"]


@dataclass
class Started:
    """An app whose lifespan runs: `asgi` serves requests with the state the lifespan
    handed over, as an ASGI server does; `services` are the ones it built."""

    asgi: ASGIApp
    state: dict[str, Any]

    @property
    def services(self) -> Services:
        services: Services = self.state[STATE_KEY]
        return services


@asynccontextmanager
async def started(app: FastAPI) -> AsyncIterator[Started]:
    async with app.router.lifespan_context(app) as state:
        handed: dict[str, Any] = dict(state or {})

        async def asgi(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] in ("http", "websocket"):
                scope["state"] = dict(handed)
            await app(scope, receive, send)

        yield Started(asgi, handed)


@dataclass
class ApiUser:
    id: uuid.UUID
    email: str
    role: Role
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def assert_problem(response: httpx.Response, status: int, slug: str) -> dict[str, object]:
    """The response is an RFC 9457 problem with this status and slug."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json"), response.headers
    body: dict[str, object] = response.json()
    assert body["status"] == status
    assert str(body["type"]).endswith(f"/{slug}"), body
    assert body.get("detail")
    return body


async def assert_invariants(app: object) -> None:
    """Every invariant check of `app.check` holds on the test database."""
    from app.check import run_checks, violations

    engine = app.state.db.engine  # type: ignore[attr-defined]
    async with engine.connect() as conn:
        raw = await conn.get_raw_connection()
        outcomes = await run_checks(raw.driver_connection)
    bad = violations(outcomes)
    assert not bad, "\n".join(f"{o.check.name}: {o.rows}" for o in bad)


async def wait_for(
    check: Callable[[], Awaitable[Any] | Any],
    timeout: float = 30,
    every: float = 0.05,
    what: str | None = None,
) -> Any:
    """Run `check` (a plain or an async function) until it returns something truthy and
    return that; after `timeout` seconds fail, naming `what` (or the last value seen)."""
    return await poll(check, timeout=timeout, every=every, what=what)


# A backend waiting for a heavyweight lock (row, table, advisory) of this database. `conn`
# must not be inside a transaction: pg_stat_activity is read once per transaction.
_LOCK_WAITERS = """
SELECT pid FROM pg_stat_activity
WHERE datname = current_database() AND wait_event_type = 'Lock'
  AND (cardinality($1::int[]) = 0 OR pg_blocking_pids(pid) && $1::int[])
  AND ($2::text IS NULL OR application_name = $2)
ORDER BY pid
"""


async def lock_waiters(
    conn: asyncpg.Connection,
    *,
    blocked_by: Sequence[int] = (),
    application_name: str | None = None,
) -> list[int]:
    """Pids of the sessions now waiting for a lock: only those blocked by one of the backends
    `blocked_by`, and only those of `application_name`, when given."""
    rows = await conn.fetch(_LOCK_WAITERS, list(blocked_by), application_name)
    return [r["pid"] for r in rows]


async def wait_for_lock_waiters(
    conn: asyncpg.Connection,
    n: int = 1,
    *,
    blocked_by: Sequence[int] = (),
    application_name: str | None = None,
    timeout: float = 10,
) -> list[int]:
    """Wait until at least `n` sessions wait for a lock (see `lock_waiters`); returns their
    pids. What a "still waiting" assertion checks first: the request reached PostgreSQL and
    is blocked there, rather than not having been sent yet."""

    async def enough() -> list[int] | None:
        pids = await lock_waiters(conn, blocked_by=blocked_by, application_name=application_name)
        return pids if len(pids) >= n else None

    found: list[int] = await wait_for(
        enough, timeout=timeout, every=0.01, what=f"{n} session(s) waiting for a lock"
    )
    return found


def run_sql(url: str, sql: str, *args: object) -> list[Any]:
    """Run one statement on its own connection, from synchronous code (migration tests)."""

    async def go() -> list[Any]:
        conn = await asyncpg.connect(url, statement_cache_size=0)
        try:
            return list(await conn.fetch(sql, *args))
        finally:
            await conn.close()

    return asyncio.run(go())


def coalesced_batches(path: str) -> tuple[float, float]:
    """Batches of a coalesced hot path (`assign`, `reserve`) run so far in this process, and
    the requests they held (`coalesced_batch_size`)."""
    from app.core.metrics import REGISTRY

    labels = {"path": path}
    count = REGISTRY.get_sample_value("coalesced_batch_size_count", labels) or 0.0
    total = REGISTRY.get_sample_value("coalesced_batch_size_sum", labels) or 0.0
    return count, total


def assert_coalesced(path: str, before: tuple[float, float], requests: int) -> None:
    """Since `before` (a `coalesced_batches` reading), `requests` requests ran in batches,
    fewer batches than requests."""
    count, total = (now - then for now, then in zip(coalesced_batches(path), before, strict=True))
    assert total == requests
    assert count < total, "every request ran in a batch of its own: nothing was coalesced"
