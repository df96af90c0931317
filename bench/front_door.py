"""What the front door (app/core/front.py) saves per hot request, in process.

The service app with its middleware, and one lean route that needs no database (an
authenticated `GET`); each request is sent straight to the ASGI app, with the front door
open and then shut, rounds alternating. Prints microseconds per request for both.

    .venv/bin/python -m bench.front_door
"""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from typing import Any

from fastapi import APIRouter

from app.api.deps import CurrentUser
from app.api.services import STATE_KEY
from app.core.lean import LeanRoute
from app.core.security import Role
from app.core.settings import Settings
from app.main import build_services, create_app

REQUESTS = 20_000
ROUNDS = 5

probe = APIRouter(route_class=LeanRoute)


@probe.get("/api/v1/__probe/{item}")
async def probe_item(item: str, user: CurrentUser) -> dict[str, str]:
    return {"item": item, "user": str(user.id)}


async def _measure(app: Any, state: dict[str, Any], path: str, token: str | None) -> float:
    headers = [(b"host", b"bench")]
    if token:
        headers.append((b"authorization", f"Bearer {token}".encode()))
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    start = time.perf_counter()
    for _ in range(REQUESTS):
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": headers,
            "client": ("127.0.0.1", 1),
            "server": ("127.0.0.1", 80),
            "state": dict(state),
        }
        await app(scope, receive, send)
    elapsed = time.perf_counter() - start
    assert sent[0]["status"] == (200 if token else 401), sent[:2]
    return elapsed / REQUESTS * 1e6


async def main() -> None:
    settings = Settings(
        env="test",
        database_url="postgresql://unused@127.0.0.1/unused",
        jwt_secret="x" * 40,
        rate_limit_enabled=False,
        run_worker=False,
        log_level="WARNING",
        _env_file=None,
    )
    app = create_app(settings)
    app.include_router(probe)
    services = build_services(settings)
    state = {STATE_KEY: services}
    token = services.tokens.issue(uuid.uuid4(), Role.user)
    app.index_lean_routes()  # type: ignore[attr-defined]
    door = app._lean  # type: ignore[attr-defined]
    cases = {
        "GET /api/v1/__probe/{item}, signed in (200)": ("/api/v1/__probe/abc", token),
        "GET /api/v1/codes/{code}, no token (401)": ("/api/v1/codes/ABC", None),
    }
    for case, (path, bearer) in cases.items():
        results: dict[str, list[float]] = {"front door": [], "whole stack": []}
        for _ in range(ROUNDS):
            for name in results:
                app._lean = door if name == "front door" else None  # type: ignore[attr-defined]
                results[name].append(await _measure(app, state, path, bearer))
        print(case)
        for name, values in results.items():
            rounds = ", ".join(f"{v:.1f}" for v in values)
            print(f"  {name}: {statistics.median(values):.1f} µs/request (rounds {rounds})")


if __name__ == "__main__":
    asyncio.run(main())
