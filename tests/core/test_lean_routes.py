"""Lean routes answer like FastAPI's own: same problems for bad input, same OpenAPI, and a
route whose parameters the plan cannot resolve fails when it is declared."""

from __future__ import annotations

import uuid
from typing import Annotated

import httpx
import pytest
from fastapi import APIRouter, Depends, FastAPI, Query

from app.core.front import LeanIndex
from app.core.lean import LeanRoute
from app.core.security import Role
from tests.conftest import MakeUser
from tests.helpers import ApiUser, assert_problem

API = "/api/v1"


async def test_bad_path_parameter_is_422_naming_it(
    client: httpx.AsyncClient, user: ApiUser
) -> None:
    resp = await client.post(f"{API}/books/not-a-uuid/assign", json={}, headers=user.headers)
    body = assert_problem(resp, 422, "validation-error")
    assert body["errors"][0]["loc"][:2] == ["path", "book_id"]


async def test_body_that_is_not_json_is_400(client: httpx.AsyncClient, user: ApiUser) -> None:
    resp = await client.post(
        f"{API}/codes/NOPE/redeem",
        content=b"{not json",
        headers={**user.headers, "Content-Type": "application/json"},
    )
    assert_problem(resp, 400, "bad-request")


async def test_missing_required_body_is_422(client: httpx.AsyncClient, make_user: MakeUser) -> None:
    admin = await make_user(Role.admin)
    resp = await client.post(f"{API}/codes/NOPE/rollback", headers=admin.headers)
    body = assert_problem(resp, 422, "validation-error")
    assert body["errors"][0]["loc"] == ["body"]


async def test_body_field_errors_are_located(client: httpx.AsyncClient, user: ApiUser) -> None:
    resp = await client.post(
        f"{API}/codes/NOPE/lock", json={"ttl_seconds": "soon"}, headers=user.headers
    )
    body = assert_problem(resp, 422, "validation-error")
    assert body["errors"][0]["loc"] == ["body", "ttl_seconds"]


async def test_no_token_is_401_on_a_lean_route(client: httpx.AsyncClient) -> None:
    assert_problem(await client.post(f"{API}/codes/NOPE/lock", json={}), 401, "unauthenticated")


async def test_user_on_an_admin_lean_route_is_403(client: httpx.AsyncClient, user: ApiUser) -> None:
    resp = await client.post(
        f"{API}/codes/NOPE/rollback", json={"redemption_id": 1}, headers=user.headers
    )
    assert_problem(resp, 403, "forbidden")


async def test_lean_routes_are_documented_like_the_others(app: FastAPI) -> None:
    lock = app.openapi()["paths"][f"{API}/codes/{{code}}/lock"]["post"]
    assert lock["security"], "the bearer scheme is declared"
    assert "requestBody" in lock
    assert {"200", "401", "404", "409", "422"} <= set(lock["responses"])
    index = LeanIndex(app)
    assert f"{API}/codes/{{code}}/lock" in [route[3] for route in index.table["POST"]]
    assert f"{API}/promos/{{promo_id}}/reserve" in [route[3] for route in index.table["POST"]]


@pytest.mark.parametrize(
    ("method", "path", "template"),
    [
        ("POST", "/codes/ABC/lock", "/codes/{code}/lock"),
        ("POST", "/codes/ABC/assign", "/codes/{code}/assign"),
        ("POST", f"/books/{uuid.UUID(int=1)}/assign", "/books/{book_id}/assign"),
        ("GET", "/codes/lock", "/codes/{code}"),  # a code named like an action
        ("GET", "/codes/ABC", "/codes/{code}"),
        ("POST", "/reservations/x/purchase", "/reservations/{reservation_id}/purchase"),
        ("POST", "/codes/ABC", None),
        ("POST", "/books", None),
        ("PUT", "/codes/ABC/lock", None),
    ],
)
async def test_index_matches_like_the_router(
    app: FastAPI, method: str, path: str, template: str | None
) -> None:
    index = LeanIndex(app)
    scope: dict[str, object] = {"type": "http", "method": method, "path": API + path}
    assert index.match(scope) is (template is not None)
    if template is not None:
        assert scope["route_template"] == API + template


def needs_two(a: int, b: int) -> int:
    """A dependency lean routes cannot resolve from the request alone."""
    return a + b


def test_a_parameter_the_plan_cannot_resolve_fails_at_declaration() -> None:
    router = APIRouter(route_class=LeanRoute)

    with pytest.raises(TypeError):

        @router.get("/sum")
        async def summed(total: Annotated[int, Depends(needs_two)]) -> int:
            return total

    with pytest.raises(TypeError):

        @router.get("/items")
        async def items(limit: Annotated[int, Query()] = 10) -> list[str]:
            return []

    @router.get("/things/{thing_id}")
    async def thing(thing_id: uuid.UUID) -> str:
        return str(thing_id)
