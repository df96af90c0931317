"""Helpers shared by tests: a started app, API users with tokens, problem assertions."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.services import STATE_KEY, Services
from app.core.security import Role


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
