"""API8:2023 Security misconfiguration: security headers on every response, errors that
never show internals, no API docs in production when turned off, and CORS closed unless
configured."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from app.core.settings import Environment, Settings
from app.main import create_app
from tests.helpers import ApiUser, assert_problem, started
from tests.security.support import API

SECURITY_HEADERS = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
}
# RFC 9457 members plus the documented extensions (API.md: errors, codes, request_id).
PROBLEM_KEYS = {"type", "title", "status", "detail", "instance", "errors", "codes", "request_id"}
LEAKS = (
    "Traceback",
    'File "',
    "sqlalchemy",
    "asyncpg",
    "psycopg",
    "SELECT ",
    "INSERT ",
    "/site-packages/",
    "Exception",
    "Error:",
)


def _assert_headers(resp: httpx.Response) -> None:
    for name, value in SECURITY_HEADERS.items():
        assert resp.headers.get(name) == value, (resp.request.url, name, resp.headers)


def _assert_clean_problem(resp: httpx.Response) -> None:
    assert resp.headers["content-type"].startswith("application/problem+json"), resp.text
    body = resp.json()
    assert set(body) <= PROBLEM_KEYS, body
    for leak in LEAKS:
        assert leak not in resp.text, (leak, resp.text)


async def _responses(client: httpx.AsyncClient, admin: ApiUser, user: ApiUser) -> list[Any]:
    json = {"Content-Type": "application/json"}
    return [
        await client.get(f"{API}/auth/me", headers=user.headers),  # 200
        await client.get("/healthz"),
        await client.get(f"{API}/auth/me"),  # 401
        await client.get(f"{API}/users", headers=user.headers),  # 403
        await client.get(f"{API}/nowhere"),  # 404 route
        await client.get(f"{API}/codes/NO-SUCH-CODE", headers=user.headers),  # 404 object
        await client.delete(f"{API}/auth/me", headers=user.headers),  # 405
        await client.post(f"{API}/auth/register", content=b"{nope", headers=json),  # 400
        await client.post(f"{API}/auth/register", json={"email": "x"}),  # 422
        await client.post(
            f"{API}/books", content=b"x" * 2_000_000, headers={**admin.headers, **json}
        ),
        await client.post(
            f"{API}/books/00000000-0000-0000-0000-000000000000/codes",
            content=b"{}",
            headers={**admin.headers, **json},
        ),  # 415 or 404
        await client.get(f"{API}/users?cursor=%%%", headers=admin.headers),  # 422 cursor
        await client.post(
            f"{API}/auth/register",
            json={"email": "a@example.com", "password": "\x00" * 9},
        ),
    ]


async def test_security_headers_on_success_and_error_responses(
    client: httpx.AsyncClient, admin: ApiUser, user: ApiUser
) -> None:
    responses = await _responses(client, admin, user)
    assert {r.status_code for r in responses} >= {200, 400, 401, 403, 404, 405, 413, 422}
    for resp in responses:
        _assert_headers(resp)


async def test_problem_bodies_have_only_documented_keys_and_no_internals(
    client: httpx.AsyncClient, admin: ApiUser, user: ApiUser
) -> None:
    for resp in await _responses(client, admin, user):
        if resp.status_code >= 400:
            _assert_clean_problem(resp)


@pytest.fixture
async def production(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The app as deployed with ENV=production and EXPOSE_DOCS=false, plus a route that
    fails the way a bug would."""
    prod = create_app(
        settings.model_copy(update={"env": Environment.production, "expose_docs": False})
    )

    async def boom() -> None:
        raise RuntimeError("SELECT password_hash FROM users -- /srv/app/secret.py line 7")

    prod.add_api_route(f"{API}/__boom", boom, methods=["GET"], include_in_schema=False)
    async with started(prod) as served:
        transport = httpx.ASGITransport(app=served.asgi, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            yield c


async def test_production_hides_the_api_docs(production: httpx.AsyncClient) -> None:
    for path in ("/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect"):
        resp = await production.get(path)
        assert_problem(resp, 404, "not-found")
        _assert_headers(resp)


async def test_unexpected_errors_show_no_stack_or_sql(production: httpx.AsyncClient) -> None:
    resp = await production.get(f"{API}/__boom", headers={"X-Request-ID": "req-123"})
    problem = assert_problem(resp, 500, "internal-error")
    _assert_clean_problem(resp)
    assert "password_hash" not in resp.text and "secret.py" not in resp.text
    assert problem["request_id"] == "req-123"


async def test_unexpected_errors_carry_the_security_headers(
    production: httpx.AsyncClient,
) -> None:
    resp = await production.get(f"{API}/__boom", headers={"X-Request-ID": "req-456"})
    assert_problem(resp, 500, "internal-error")
    assert resp.headers.get("x-request-id") == "req-456"
    _assert_headers(resp)


def test_docs_are_served_outside_production_by_default(settings: Settings) -> None:
    dev = create_app(settings.model_copy(update={"env": Environment.dev}))
    assert dev.openapi_url == "/openapi.json"


async def test_cors_is_closed_by_default(client: httpx.AsyncClient, user: ApiUser) -> None:
    origin = {"Origin": "https://evil.example"}
    simple = await client.get(f"{API}/auth/me", headers={**user.headers, **origin})
    assert simple.status_code == 200
    preflight = await client.options(
        f"{API}/auth/me",
        headers={
            **origin,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "Authorization",
        },
    )
    for resp in (simple, preflight):
        assert "access-control-allow-origin" not in resp.headers
        assert "access-control-allow-credentials" not in resp.headers


async def test_configured_cors_allows_only_the_listed_origins(settings: Settings) -> None:
    allowed = "https://shop.example"
    cors = create_app(settings.model_copy(update={"cors_origins": [allowed]}))
    transport = httpx.ASGITransport(app=cors, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        preflight = {
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "Authorization, Content-Type",
        }
        good = await c.options(f"{API}/auth/me", headers={"Origin": allowed, **preflight})
        assert good.headers.get("access-control-allow-origin") == allowed
        for origin in ("https://evil.example", "https://shop.example.evil.example", "null"):
            bad = await c.options(f"{API}/auth/me", headers={"Origin": origin, **preflight})
            assert bad.headers.get("access-control-allow-origin") in (None, ""), origin
            simple = await c.get("/healthz", headers={"Origin": origin})
            assert "access-control-allow-origin" not in simple.headers
        assert "access-control-allow-credentials" not in good.headers


async def test_configured_cors_covers_the_hot_routes(settings: Settings) -> None:
    """Hot routes are answered ahead of FastAPI's stack; CORS still answers for them, the
    413 for an oversized body included (browsers hide answers without it)."""
    allowed = "https://shop.example"
    cors = create_app(settings.model_copy(update={"cors_origins": [allowed]}))
    async with started(cors) as served:
        transport = httpx.ASGITransport(app=served.asgi, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            for origin, expected in ((allowed, allowed), ("https://evil.example", None)):
                resp = await c.post(f"{API}/codes/NOPE/lock", json={}, headers={"Origin": origin})
                assert resp.status_code == 401
                assert resp.headers.get("access-control-allow-origin") == expected
                assert resp.headers["x-content-type-options"] == "nosniff"
            too_large = await c.post(
                f"{API}/codes/NOPE/lock",
                content=b"{" + b" " * 2_000_000 + b"}",
                headers={"Origin": allowed, "Content-Type": "application/json"},
            )
            assert too_large.status_code == 413
            assert too_large.headers.get("access-control-allow-origin") == allowed
