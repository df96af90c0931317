"""The hot routes answer the same with lean routes on (through the front door) and off
(`LEAN_ROUTES=false`: FastAPI's own handlers): the same requests to both apps, on the same
database, get the same status, content type and body."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from app.core.security import Role
from app.core.settings import Settings
from app.main import create_app
from tests.conftest import MakeUser
from tests.helpers import started

API = "/api/v1"
NO_BOOK = uuid.UUID(int=7)
JSON = {"content-type": "application/json"}


@pytest.fixture(scope="module")
async def apps(app: FastAPI, settings: Settings) -> AsyncIterator[dict[str, httpx.AsyncClient]]:
    lean = (
        app
        if settings.lean_routes
        else create_app(settings.model_copy(update={"lean_routes": True}))
    )
    plain = create_app(settings.model_copy(update={"lean_routes": False}))
    async with started(plain) as plain_served:
        if lean is app:
            lean_asgi = app.state.asgi
            async with _clients(lean_asgi, plain_served.asgi) as clients:
                yield clients
        else:
            async with (
                started(lean) as lean_served,
                _clients(lean_served.asgi, plain_served.asgi) as clients,
            ):
                yield clients


class _clients:
    def __init__(self, lean: Any, plain: Any) -> None:
        self.clients = {
            name: httpx.AsyncClient(
                transport=httpx.ASGITransport(app=asgi, raise_app_exceptions=False),
                base_url="http://test",
            )
            for name, asgi in (("lean", lean), ("plain", plain))
        }

    async def __aenter__(self) -> dict[str, httpx.AsyncClient]:
        return self.clients

    async def __aexit__(self, *exc: object) -> None:
        for client in self.clients.values():
            await client.aclose()


def _cases(user: dict[str, str], admin: dict[str, str]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        ("POST", "/codes/NOPE/lock", {}),  # no token
        ("POST", "/codes/NOPE/lock", {"headers": {"Authorization": "Bearer nonsense"}}),
        ("POST", "/codes/NOPE/lock", {"headers": user, "json": {}}),  # unknown code: 404
        ("POST", "/codes/NOPE/lock", {"headers": user, "json": {"ttl_seconds": "soon"}}),
        ("POST", "/codes/NOPE/lock", {"headers": {**user, **JSON}, "content": b"{not json"}),
        (
            "POST",
            "/codes/NOPE/lock",
            {"headers": {**user, "content-type": "text/plain"}, "content": b"{}"},
        ),
        ("POST", "/codes/NOPE/lock", {"headers": user, "content": b"{}"}),  # no content type
        ("POST", "/codes/NOPE/redeem", {"headers": user}),  # required body missing
        ("POST", "/codes/NOPE/rollback", {"headers": user, "json": {"redemption_id": 1}}),
        ("POST", "/codes/NOPE/rollback", {"headers": admin}),
        ("GET", "/codes/NOPE", {"headers": user}),
        ("POST", f"{'/books/not-a-uuid'}/assign", {"headers": user, "json": {}}),
        ("POST", f"/books/{NO_BOOK}/assign", {"headers": user, "json": {}}),
        ("POST", f"/books/{NO_BOOK}/assign", {"headers": user, "json": {"user_id": "x"}}),
        ("POST", f"/promos/{NO_BOOK}/reserve", {"headers": user}),
        ("POST", "/promos/nope/reserve", {"headers": user}),
        ("POST", f"/reservations/{NO_BOOK}/purchase", {"headers": user}),
        ("POST", f"/reservations/{NO_BOOK}/cancel", {"headers": user}),
        ("GET", f"/reservations/{NO_BOOK}", {"headers": user}),
        ("POST", "/codes/NOPE/lock", {"headers": {**user, "Idempotency-Key": ""}, "json": {}}),
    ]


def _comparable(response: httpx.Response) -> tuple[int, str | None, Any]:
    body: Any = response.content
    if response.headers.get("content-type", "").endswith("json"):
        body = response.json()
    return response.status_code, response.headers.get("content-type"), body


async def test_hot_routes_answer_the_same_lean_or_plain(
    apps: dict[str, httpx.AsyncClient], make_live_user: MakeUser
) -> None:
    user = (await make_live_user(Role.user)).headers
    admin = (await make_live_user(Role.admin)).headers
    for method, path, options in _cases(user, admin):
        lean = await apps["lean"].request(method, API + path, **options)
        plain = await apps["plain"].request(method, API + path, **options)
        assert _comparable(lean) == _comparable(plain), (method, path, options)
        assert lean.status_code != 500, lean.text
