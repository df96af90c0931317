from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

import asyncpg
import httpx
import orjson
import pytest
import uvicorn
from fastapi import FastAPI

from app.core.security import Role
from tests.conftest import MakeUser
from tests.notifications.conftest import wait_for


@pytest.fixture
async def server_url(app: FastAPI) -> AsyncIterator[str]:
    """The app behind a real HTTP server (streams need one; the app's lifespan already ran)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app.state.asgi, lifespan="off", log_level="warning"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    await wait_for(lambda: server.started, timeout=10)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    server.should_exit = True
    with contextlib.suppress(Exception):
        await asyncio.wait_for(task, timeout=10)
    sock.close()


async def _events(response: httpx.Response) -> AsyncIterator[dict[str, str]]:
    event: dict[str, str] = {}
    async for line in response.aiter_lines():
        if not line:
            if event:
                yield event
            event = {}
        elif not line.startswith(":"):
            key, _, value = line.partition(":")
            event[key] = value.lstrip()


async def _notify(pg: asyncpg.Connection, user_id: object, day: str) -> int:
    """Insert a notification and NOTIFY the user's channel the way the fan-out does."""
    async with pg.transaction():
        new_id: int = await pg.fetchval(
            "INSERT INTO notifications (user_id, promo_id, day)"
            " VALUES ($1, gen_random_uuid(), $2::text::date) RETURNING id",
            user_id,
            day,
        )
        await pg.execute(
            "SELECT pg_notify('user_' || replace($1::uuid::text, '-', ''), $2)",
            str(user_id),
            str(new_id),
        )
    return new_id


async def test_stream_pushes_new_notifications_and_replays_after_last_event_id(
    server_url: str, pg: asyncpg.Connection, make_live_user: MakeUser
) -> None:
    user = await make_live_user(Role.user)
    url = f"{server_url}/api/v1/me/notifications/stream"
    async with httpx.AsyncClient(timeout=10) as http:
        async with http.stream("GET", url, headers=user.headers) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            events = _events(response)
            ready = await asyncio.wait_for(anext(events), 5)
            assert ready["event"] == "ready"
            first = await _notify(pg, user.id, "2026-01-01")
            pushed = await asyncio.wait_for(anext(events), 5)
            assert pushed["event"] == "notification" and pushed["id"] == str(first)
            assert orjson.loads(pushed["data"])["id"] == first
        second = await _notify(pg, user.id, "2026-01-02")
        headers = {**user.headers, "Last-Event-ID": str(first)}
        async with http.stream("GET", url, headers=headers) as response:
            events = _events(response)
            assert (await asyncio.wait_for(anext(events), 5))["event"] == "ready"
            replayed = await asyncio.wait_for(anext(events), 5)
            assert replayed["id"] == str(second)
        unauthenticated = await http.get(url)
        assert unauthenticated.status_code == 401


def test_openapi_documents_the_stream(app: FastAPI) -> None:
    """A client reading `/docs` finds the stream: its media type, the events it sends, the
    `Last-Event-ID` header and its errors."""
    operation = app.openapi()["paths"]["/api/v1/me/notifications/stream"]["get"]
    ok = operation["responses"]["200"]
    assert list(ok["content"]) == ["text/event-stream"]
    events = ok["content"]["text/event-stream"]["x-events"]
    assert set(events) == {"ready", "notification"}
    assert events["notification"]["data"] == {"$ref": "#/components/schemas/NotificationOut"}
    for name in events:
        assert f"`{name}`" in ok["description"], name
    [header] = [p for p in operation["parameters"] if p["in"] == "header"]
    assert header["name"] == "Last-Event-ID" and not header["required"]
    assert "replay" in header["description"]
    assert {"401", "429", "503"} <= set(operation["responses"])
    assert operation["security"]
