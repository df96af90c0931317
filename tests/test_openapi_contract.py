"""Property-based contract test over the whole OpenAPI: every route, as an admin, against a
real server process. Fails on any 500 or any response its schema does not describe."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from schemathesis import checks as st_checks

from app.core.security import Role
from app.core.settings import Settings
from tests.live_server import LiveServer
from tests.openapi_stateful import without_event_streams

EXAMPLES = 15


@pytest.fixture(scope="module")
def live_server(settings: Settings) -> Iterator[LiveServer]:
    with LiveServer(settings) as server:
        yield server


@pytest.fixture(scope="module")
def admin_token(live_server: LiveServer, settings: Settings) -> str:
    import asyncpg

    from app.core.db import libpq_url

    async def make() -> uuid.UUID:
        conn = await asyncpg.connect(libpq_url(settings.database_url or ""), statement_cache_size=0)
        try:
            user_id: uuid.UUID = await conn.fetchval(
                "INSERT INTO users (email, role) VALUES ($1, 'admin') RETURNING id",
                f"contract-{uuid.uuid4().hex[:8]}@example.com",
            )
            return user_id
        finally:
            await conn.close()

    user_id = asyncio.run(make())
    token: str = live_server.tokens.issue(user_id, Role.admin)
    return token


CHECKS = [
    st_checks.not_a_server_error,
    st_checks.status_code_conformance,
    st_checks.content_type_conformance,
    st_checks.response_schema_conformance,
]


def _operations(live_server: LiveServer) -> list[schemathesis.APIOperation]:  # type: ignore[name-defined]
    schema = without_event_streams(
        schemathesis.openapi.from_url(f"http://127.0.0.1:{live_server.port}/openapi.json")
    )
    return [result.ok() for result in schema.get_all_operations()]


def test_every_route_honours_its_schema(live_server: LiveServer, admin_token: str) -> None:
    operations = _operations(live_server)
    assert len(operations) > 10
    headers = {"Authorization": f"Bearer {admin_token}"}
    failures: list[str] = []
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        def run(case: schemathesis.Case) -> None:
            case.call_and_validate(headers=headers, checks=CHECKS, timeout=30)

        try:
            run()
        except Exception as exc:  # collect every route's failure, then report them all
            failures.append(f"{operation.method.upper()} {operation.path}: {exc}")
    assert not failures, "\n\n".join(failures)


def test_declared_links_point_at_real_operations(app: FastAPI) -> None:
    """Every link in the OpenAPI names an operation that exists by its operationId, its
    parameters are that operation's, and lock → redeem passes the `lock_id` of the lock's
    answer."""
    schema = app.openapi()
    operations = {
        operation["operationId"]: operation
        for item in schema["paths"].values()
        for operation in item.values()
    }
    found = set()
    for item in schema["paths"].values():
        for operation in item.values():
            for response in operation.get("responses", {}).values():
                for name, link in response.get("links", {}).items():
                    target = operations[link["operationId"]]
                    names = {p["name"] for p in target.get("parameters", ())}
                    assert set(link["parameters"]) <= names, (name, link)
                    found.add((operation["operationId"], link["operationId"]))
    for flow in [
        ("assignCode", "lockCode"),
        ("assignRandomCode", "lockCode"),
        ("lockCode", "redeemCode"),
        ("reservePromo", "purchaseReservation"),
        ("reservePromo", "cancelReservation"),
        ("listMyNotifications", "markNotificationRead"),
    ]:
        assert flow in found, flow
    lock = schema["paths"]["/api/v1/codes/{code}/lock"]["post"]["responses"]["200"]
    assert lock["links"]["Redeem"]["requestBody"] == {"lock_id": "$response.body#/lock_id"}


def test_the_fuzzers_leave_out_only_the_event_stream(app: FastAPI) -> None:
    """The stream is documented, and kept out of the fuzzers by their configuration alone."""
    schema = schemathesis.openapi.from_dict(app.openapi())
    every = {result.ok().label for result in schema.get_all_operations()}
    fuzzed = {result.ok().label for result in without_event_streams(schema).get_all_operations()}
    assert every - fuzzed == {"GET /api/v1/me/notifications/stream"}
