"""PostgreSQL text cannot hold NUL (`invalid byte sequence for encoding "UTF8": 0x00`): a
NUL in any text a client sends must be refused as a problem (422, or 401 for credentials)
before it reaches the database, never answered 500."""

from __future__ import annotations

import copy
import uuid
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from fastapi import FastAPI

from app.core.security import Role
from tests.conftest import MakeUser

NUL = "A\x00B"


async def test_nul_in_the_token_username_is_refused_not_500(live_client: httpx.AsyncClient) -> None:
    response = await live_client.post(
        "/api/v1/auth/token", data={"username": f"ana{NUL}@example.com", "password": "x" * 10}
    )
    assert response.status_code in (401, 422), response.text
    assert response.headers["content-type"].startswith("application/problem+json")


def _sample(schema: dict[str, Any], components: dict[str, Any]) -> Any:
    """A plausible value for a parameter schema (the fuzzers cover the rest)."""
    if "$ref" in schema:
        return _sample(components[schema["$ref"].rsplit("/", 1)[-1]], components)
    if "enum" in schema:
        return schema["enum"][0]
    if schema.get("format") == "uuid":
        return str(uuid.uuid4())
    if schema.get("format") == "date-time":
        return "2026-01-01T00:00:00Z"
    return {"integer": 1, "number": 1, "boolean": "true"}.get(schema.get("type", ""), "x")


def _url(
    path: str, params: list[dict[str, Any]], nul_in: str | None, components: dict[str, Any]
) -> str:
    """`path` with its parameters filled in, NUL in the one named `nul_in`."""
    query = []
    for p in params:
        value = NUL if p["name"] == nul_in else _sample(p["schema"], components)
        quoted = quote(str(value), safe="")
        if p["in"] == "path":
            path = path.replace(f"{{{p['name']}}}", quoted)
        elif p["name"] == nul_in:
            query.append(f"{p['name']}={quoted}")
    return path + ("?" + "&".join(query) if query else "")


def _nul_requests(schema: dict[str, Any]) -> list[tuple[str, str, dict[str, Any] | None]]:
    """(method, url, JSON body) per text a client can send with a NUL in it: each string
    path or query parameter, and each top-level string field of a JSON body's example."""
    components = schema["components"]["schemas"]
    found = []
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            params = [p for p in operation.get("parameters", ()) if p["in"] in ("path", "query")]
            body = operation.get("requestBody", {}).get("content", {}).get("application/json")
            example = None
            if body is not None:
                ref = body["schema"].get("$ref", "")
                examples = components.get(ref.rsplit("/", 1)[-1], {}).get("examples", [{}])
                example = examples[0]

            for p in params:
                if p["schema"].get("type") == "string" and "format" not in p["schema"]:
                    found.append(
                        (method, _url(path, params, p["name"], components), copy.deepcopy(example))
                    )
            for field, value in (example or {}).items():
                if isinstance(value, str):
                    found.append(
                        (method, _url(path, params, None, components), {**example, field: NUL})
                    )  # type: ignore[dict-item]
    return found


@pytest.mark.parametrize("role", [Role.admin, Role.user])
async def test_nul_in_any_text_is_never_a_500(
    app: FastAPI, live_client: httpx.AsyncClient, make_live_user: MakeUser, role: Role
) -> None:
    caller = await make_live_user(role)
    requests = _nul_requests(app.openapi())
    assert len(requests) > 20
    failures = []
    for method, url, body in requests:
        if url.endswith("/stream"):
            continue
        response = await live_client.request(method, url, json=body, headers=caller.headers)
        if response.status_code >= 500:
            failures.append(
                f"{method.upper()} {url} {body}: {response.status_code} {response.text}"
            )
    assert not failures, "\n".join(failures)
