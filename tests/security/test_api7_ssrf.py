"""API7:2023 Server side request forgery: the only outbound request the service makes is
the notification webhook, whose URL is configuration only. No request field, parameter
or header can name a URL for the service to fetch."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from tests.helpers import ApiUser, assert_problem, wait_for
from tests.security.support import API

_URLISH = re.compile(
    r"(url|uri|href|link|webhook|callback|redirect|endpoint|host|domain|jwks|jku|fetch)",
    re.IGNORECASE,
)


def _property_names(schema: Any, path: str = "") -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    if isinstance(schema, dict):
        for name in schema.get("properties", {}):
            found.append((f"{path}.{name}", name))
        for key, sub in schema.items():
            found.extend(_property_names(sub, f"{path}.{key}"))
    elif isinstance(schema, list):
        for i, sub in enumerate(schema):
            found.extend(_property_names(sub, f"{path}[{i}]"))
    return found


def _formats(schema: Any) -> set[str]:
    if isinstance(schema, dict):
        own = {str(schema["format"])} if "format" in schema else set()
        return own.union(*(_formats(v) for v in schema.values()))
    if isinstance(schema, list):
        return set().union(*(_formats(v) for v in schema))
    return set()


def test_no_request_field_or_parameter_names_a_url(app: FastAPI) -> None:
    spec = app.openapi()
    urlish = [
        p for p, name in _property_names(spec["components"]["schemas"]) if _URLISH.search(name)
    ]
    assert urlish == []
    params = [
        (path, method, p["name"])
        for path, item in spec["paths"].items()
        for method, op in item.items()
        for p in op.get("parameters", [])
        if _URLISH.search(p["name"])
    ]
    assert params == []
    assert {"uri", "url", "iri", "uri-reference", "hostname"}.isdisjoint(_formats(spec))


def test_no_callbacks_or_webhooks_are_registered_by_clients(app: FastAPI) -> None:
    spec = app.openapi()
    assert not spec.get("webhooks")
    callbacks = [
        (path, method)
        for path, item in spec["paths"].items()
        for method, op in item.items()
        if op.get("callbacks")
    ]
    assert callbacks == []


@pytest.mark.parametrize("field", ["webhook_url", "callback_url", "notify_webhook_url", "url"])
async def test_url_fields_in_bodies_are_refused(
    app: FastAPI, client: httpx.AsyncClient, admin: ApiUser, user: ApiUser, field: str
) -> None:
    target = "http://169.254.169.254/latest/meta-data/"
    attempts = [
        ("PUT", f"{API}/me/profile", {field: target}, user),
        ("POST", f"{API}/segments", {"name": "s", "kind": "static", field: target}, admin),
        ("POST", f"{API}/stores", {"name": "s", "lat": 1.0, "lng": 1.0, field: target}, admin),
        ("POST", f"{API}/books", {"name": "b", field: target}, admin),
        ("PATCH", f"{API}/users/{user.id}", {"role": "user", field: target}, admin),
    ]
    for method, url, body, who in attempts:
        resp = await client.request(method, url, json=body, headers=who.headers)
        assert_problem(resp, 422, "validation-error")
    assert app.state.settings.notify_webhook_url is None


async def test_token_key_urls_are_never_fetched(
    client: httpx.AsyncClient, settings: Any, user: ApiUser
) -> None:
    """A token naming a key URL (`jku`/`x5u`) is refused before any fetch: the listener
    below would record a connection."""
    import asyncio
    import time

    import jwt

    hits: list[bytes] = []

    async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        hits.append(await reader.read(1024))
        writer.close()

    server = await asyncio.start_server(record, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        now = int(time.time())
        for header in ("jku", "x5u"):
            token = jwt.encode(
                {"sub": str(user.id), "role": "admin", "iat": now, "exp": now + 60},
                settings.jwt_secret,
                algorithm="HS256",
                headers={header: f"http://127.0.0.1:{port}/keys", "kid": "attacker"},
            )
            resp = await client.get(f"{API}/users", headers={"Authorization": f"Bearer {token}"})
            assert_problem(resp, 401, "unauthenticated")
        # A fetch made while deciding would have connected before the answer. A connection
        # of our own, once recorded, shows the listener would have seen one.
        _, canary = await asyncio.open_connection("127.0.0.1", port)
        canary.write(b"canary")
        await canary.drain()
        await wait_for(lambda: b"canary" in hits, timeout=10, what="canary")
        canary.close()
    finally:
        server.close()
        await server.wait_closed()
    assert hits == [b"canary"]
