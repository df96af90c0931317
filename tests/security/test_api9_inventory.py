"""API9:2023 Improper inventory management: the OpenAPI document lists exactly the routes
the app serves (the event stream included), with their auth requirements, and no other API
version answers."""

from __future__ import annotations

import httpx
from fastapi import FastAPI

from tests.helpers import ApiUser, assert_problem
from tests.security.support import API, admin_endpoints, api_endpoints, authenticated_endpoints

OPERATIONS_OUTSIDE_API = {"GET /healthz", "GET /readyz", "GET /metrics"}
METHODS = {"get", "put", "post", "delete", "patch", "options", "head", "trace"}


def _documented(app: FastAPI) -> set[str]:
    return {
        f"{method.upper()} {path}"
        for path, item in app.openapi()["paths"].items()
        for method in item
        if method in METHODS
    }


def test_openapi_lists_exactly_the_served_routes(app: FastAPI) -> None:
    served = {str(e) for e in api_endpoints(app)}
    documented = _documented(app)
    api_documented = {op for op in documented if op.split(" ", 1)[1].startswith(API)}
    assert served - api_documented == set()
    assert api_documented - served == set()
    assert documented - api_documented == OPERATIONS_OUTSIDE_API
    hidden = {str(e) for e in api_endpoints(app) if not e.include_in_schema}
    assert hidden == set()


def test_documented_auth_matches_the_guards(app: FastAPI) -> None:
    spec = app.openapi()

    def op(name: str) -> dict[str, object]:
        method, path = name.split(" ", 1)
        operation: dict[str, object] = spec["paths"][path][method.lower()]
        return operation

    for endpoint in authenticated_endpoints(app):
        if not endpoint.include_in_schema:
            continue
        operation = op(str(endpoint))
        assert operation.get("security"), endpoint
        assert "401" in operation["responses"], endpoint  # type: ignore[operator]
    for endpoint in admin_endpoints(app):
        assert "403" in op(str(endpoint))["responses"], endpoint  # type: ignore[index]


async def test_other_api_versions_and_unprefixed_paths_do_not_answer(
    client: httpx.AsyncClient, user: ApiUser
) -> None:
    for path in ("/api/v0/auth/me", "/api/v2/auth/me", "/api/auth/me", "/auth/me", "/v1/auth/me"):
        assert_problem(await client.get(path, headers=user.headers), 404, "not-found")


async def test_stream_requires_a_token(client: httpx.AsyncClient) -> None:
    assert_problem(await client.get(f"{API}/me/notifications/stream"), 401, "unauthenticated")
