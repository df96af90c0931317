from __future__ import annotations

import httpx

from tests.helpers import assert_problem


async def test_healthz_is_ok(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_readyz_reports_migrations_at_head(client: httpx.AsyncClient) -> None:
    response = await client.get("/readyz")
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "ready"


async def test_metrics_count_requests_by_route_template(client: httpx.AsyncClient) -> None:
    await client.get("/api/v1/users/00000000-0000-0000-0000-000000000000")
    body = (await client.get("/metrics")).text
    assert 'route="/api/v1/users/{user_id}"' in body
    assert "db_pool_connections" in body


async def test_unknown_route_is_404_problem(client: httpx.AsyncClient) -> None:
    assert_problem(await client.get("/api/v1/nothing-here"), 404, "not-found")


async def test_wrong_method_is_405_problem_with_allow(client: httpx.AsyncClient) -> None:
    response = await client.delete("/healthz")
    assert_problem(response, 405, "method-not-allowed")
    assert "GET" in response.headers["allow"]


async def test_request_id_is_echoed(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert response.headers["x-request-id"] == "abc-123"
    assert response.headers["x-content-type-options"] == "nosniff"


async def test_oversized_body_is_413_problem(client: httpx.AsyncClient) -> None:
    payload = b'{"email": "' + b"a" * 2_000_000 + b'"}'
    response = await client.post(
        "/api/v1/auth/register", content=payload, headers={"content-type": "application/json"}
    )
    assert_problem(response, 413, "payload-too-large")
