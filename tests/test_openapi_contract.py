"""Property-based contract test over the whole OpenAPI: every route, as an admin, against a
real server process. Fails on any 500 or any response its schema does not describe."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from schemathesis import checks as st_checks

from app.api.contract import OPERATIONS
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


def _operations_of(schema: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method, path, operation)
        for path, item in schema["paths"].items()
        for method, operation in item.items()
    ]


def test_operation_ids_are_explicit_camel_case_and_tags_declared(app: FastAPI) -> None:
    schema = app.openapi()
    ids = [operation["operationId"] for _, _, operation in _operations_of(schema)]
    assert len(ids) == len(set(ids)) == len(OPERATIONS)
    assert all(re.fullmatch(r"[a-z]+(?:[A-Z][a-z]+)*", i) for i in ids), ids
    for wanted in ("lockCode", "assignRandomCode", "reservePromo", "issueToken"):
        assert wanted in ids
    declared = {tag["name"] for tag in schema["tags"]}
    assert all(set(op["tags"]) <= declared for _, _, op in _operations_of(schema))
    assert not any(name.startswith("Body_") for name in schema["components"]["schemas"])


def test_every_error_is_a_problem_with_its_slugs_and_headers(app: FastAPI) -> None:
    """Errors only as application/problem+json with the `Problem` schema and a named example
    per slug; 201 names `Location`, 409/429/503 `Retry-After`, every answer `X-Request-ID`."""
    schema = app.openapi()
    slugs: set[str] = set()
    for method, path, operation in _operations_of(schema):
        for status, response in operation["responses"].items():
            assert "X-Request-ID" in response["headers"], (method, path, status)
            if int(status) < 400:
                continue
            assert list(response["content"]) == ["application/problem+json"], (path, status)
            content = response["content"]["application/problem+json"]
            assert content["schema"] == {"$ref": "#/components/schemas/Problem"}
            assert set(content["examples"]) == set(response["x-problem-slugs"]) != set()
            slugs |= set(response["x-problem-slugs"])
            if status in ("409", "429", "503"):
                assert "Retry-After" in response["headers"], (method, path, status)
        if method != "get" and path.startswith("/api/"):
            assert "500" in operation["responses"] and "409" in operation["responses"]
        if "201" in operation["responses"]:
            assert "Location" in operation["responses"]["201"]["headers"], path
    # every slug of the contract (API.md) except the path-level 405 and the unbuilt ones
    for slug in [
        "bad-request", "unauthenticated", "forbidden", "not-found", "book-exhausted",
        "code-unavailable", "code-limit-reached", "code-locked", "code-not-assigned",
        "redemption-limit-reached", "user-redemption-limit-reached", "book-inactive",
        "code-exists", "not-redeemed", "email-taken", "sold-out", "promo-not-running",
        "purchase-limit-reached", "reservation-expired", "busy", "not-eligible",
        "payload-too-large", "unsupported-media-type", "validation-error", "invalid-csv",
        "idempotency-key-reused", "idempotency-key-in-use", "internal-error", "unavailable",
        "rate-limited",
    ]:  # fmt: skip
        assert slug in slugs, slug
    problem = schema["components"]["schemas"]["Problem"]["properties"]
    assert {"errors", "codes", "request_id"} <= set(problem)


def test_idempotency_key_is_documented_where_it_is_honoured(app: FastAPI) -> None:
    schema = app.openapi()
    keyed = {
        operation["operationId"]
        for _, _, operation in _operations_of(schema)
        if any(p["name"] == "Idempotency-Key" for p in operation.get("parameters", ()))
    }
    assert {"lockCode", "redeemCode", "assignRandomCode", "reservePromo", "createBook"} <= keyed
    assert "importCodes" in keyed and "markNotificationRead" in keyed
    assert not {"getCode", "registerUser", "issueToken", "updateBook"} & keyed


def test_optional_bodies_and_patches_are_what_generators_handle(app: FastAPI) -> None:
    """An optional body is a plain `$ref`, not `anyOf` with null; a PATCH field that
    refuses null does not offer it."""
    schema = app.openapi()
    lock = schema["paths"]["/api/v1/codes/{code}/lock"]["post"]["requestBody"]
    assert lock["required"] is False
    assert lock["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/LockIn"}
    components = schema["components"]["schemas"]
    for model, field, nullable in [
        ("BookPatch", "name", False),
        ("BookPatch", "max_redemptions_per_user", True),
        ("PromoPatch", "quantity", False),
        ("ProductPatch", "price_cents", False),
        ("StorePatch", "name", False),
        ("StorePatch", "address", True),
    ]:
        prop = components[model]["properties"][field]
        offers_null = {"type": "null"} in prop.get("anyOf", [])
        assert offers_null is nullable, (model, field, prop)


def test_a_route_missing_from_the_contract_table_stops_the_document(settings: Settings) -> None:
    from app.main import create_app

    extra = create_app(settings)

    @extra.get("/api/v1/unlisted")
    async def unlisted() -> dict[str, str]:
        return {}

    with pytest.raises(KeyError, match="GET /unlisted is not in the OpenAPI contract table"):
        extra.openapi()
    assert extra.openapi_schema is None
