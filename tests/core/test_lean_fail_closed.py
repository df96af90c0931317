"""Lean routes fail closed: what the plan does not honour is refused when the route is
declared or included, naming the route; what it does honour (route and router
dependencies, the body's content type, dependency overrides) answers as FastAPI does."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

import httpx
import pytest
from fastapi import APIRouter, Body, Depends, Header, Request
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel

from app.core.front import ServiceApp
from app.core.lean import LeanRoute
from app.core.problems import Forbidden, install_problem_handlers
from tests.helpers import assert_problem


class Item(BaseModel):
    name: str
    size: int = 1


async def caller(request: Request) -> str:
    return request.headers.get("x-caller", "anonymous")


Caller = Annotated[str, Depends(caller)]


async def only_admins(who: Caller) -> None:
    if who != "admin":
        raise Forbidden("admins only")


def _lean_router(**options: object) -> APIRouter:
    router = APIRouter(route_class=LeanRoute, **options)  # type: ignore[arg-type]

    @router.post("/items/{item_id}", status_code=201)
    async def put_item(item_id: int, item: Item, who: Caller) -> dict[str, object]:
        return {"id": item_id, "name": item.name, "size": item.size, "by": who}

    return router


def _app(
    router: APIRouter, *, lean: bool = True, front_door: bool = True, **include: object
) -> ServiceApp:
    app = ServiceApp(lean_routes=lean)
    install_problem_handlers(app)
    app.include_router(router, **include)  # type: ignore[arg-type]
    if front_door:
        app.index_lean_routes()
    return app


@pytest.fixture(params=["front door", "whole stack", "plain FastAPI"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _build(mode: str, router: APIRouter, **include: object) -> ServiceApp:
    return _app(router, lean=mode != "plain FastAPI", front_door=mode == "front door", **include)


@pytest.fixture
async def http() -> AsyncIterator[list[httpx.AsyncClient]]:
    clients: list[httpx.AsyncClient] = []
    yield clients
    for c in clients:
        await c.aclose()


def _client(app: ServiceApp, clients: list[httpx.AsyncClient]) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    client = httpx.AsyncClient(transport=transport, base_url="http://test")
    clients.append(client)
    return client


# --- what the plan honours, answered the same in every mode ------------------------------


async def test_route_dependency_guard_answers_403(mode: str, http: list[httpx.AsyncClient]) -> None:
    router = APIRouter(route_class=LeanRoute)

    @router.post("/guarded", dependencies=[Depends(only_admins)])
    async def guarded() -> dict[str, str]:
        return {"ok": "yes"}

    client = _client(_build(mode, router), http)
    assert_problem(await client.post("/guarded"), 403, "forbidden")
    ok = await client.post("/guarded", headers={"x-caller": "admin"})
    assert ok.status_code == 200 and ok.json() == {"ok": "yes"}


async def test_router_dependency_guard_answers_403(
    mode: str, http: list[httpx.AsyncClient]
) -> None:
    app = _build(mode, _lean_router(), prefix="/v1", dependencies=[Depends(only_admins)])
    client = _client(app, http)
    assert_problem(await client.post("/v1/items/1", json={"name": "a"}), 403, "forbidden")
    ok = await client.post("/v1/items/1", json={"name": "a"}, headers={"x-caller": "admin"})
    assert ok.status_code == 201 and ok.json()["by"] == "admin"


@pytest.mark.parametrize(
    ("content_type", "status"),
    [
        ("application/json", 201),
        ("application/json; charset=utf-8", 201),
        ("application/merge-patch+json", 201),
        ("text/plain", 422),
        ("application/x-www-form-urlencoded", 422),
        (None, 422),
    ],
)
async def test_body_is_json_only_by_its_content_type(
    mode: str, http: list[httpx.AsyncClient], content_type: str | None, status: int
) -> None:
    client = _client(_build(mode, _lean_router()), http)
    headers = {"content-type": content_type} if content_type else {}
    resp = await client.post("/items/1", content=b'{"name": "a"}', headers=headers)
    if content_type is None:  # httpx sends none; make sure of it
        assert "content-type" not in resp.request.headers
    assert resp.status_code == status, resp.text
    if status == 422:
        assert_problem(resp, 422, "validation-error")


async def test_dependency_overrides_are_honoured(mode: str, http: list[httpx.AsyncClient]) -> None:
    app = _build(mode, _lean_router())
    client = _client(app, http)

    async def as_tester() -> str:
        return "tester"

    app.dependency_overrides[caller] = as_tester
    resp = await client.post("/items/1", json={"name": "a"})
    assert resp.json()["by"] == "tester"

    def sync_override(request: Request) -> str:  # a plain def: FastAPI's own handler runs it
        return "sync-" + request.method

    app.dependency_overrides[caller] = sync_override
    resp = await client.post("/items/1", json={"name": "a"})
    assert resp.json()["by"] == "sync-POST"

    app.dependency_overrides.clear()
    resp = await client.post("/items/1", json={"name": "a"})
    assert resp.json()["by"] == "anonymous"


async def test_errors_come_in_fastapis_order(mode: str, http: list[httpx.AsyncClient]) -> None:
    router = APIRouter(route_class=LeanRoute)

    @router.post("/things/{thing_id}", dependencies=[Depends(only_admins)])
    async def thing(thing_id: int, item: Item) -> dict[str, int]:
        return {"id": thing_id}

    client = _client(_build(mode, router), http)
    admin = {"x-caller": "admin"}
    # Body that is not JSON: refused before anything else.
    bad_json = await client.post(
        "/things/x", content=b"{", headers={"content-type": "application/json"}
    )
    assert_problem(bad_json, 400, "bad-request")
    # Then the dependencies: 403 before the path and body are validated.
    assert_problem(await client.post("/things/x", json={}), 403, "forbidden")
    # Then one 422 with every error, the path's first.
    body = assert_problem(
        await client.post("/things/x", json={}, headers=admin), 422, "validation-error"
    )
    assert [e["loc"] for e in body["errors"]] == [["path", "thing_id"], ["body", "name"]]  # type: ignore[index]


# --- what the plan refuses, when the route is declared or included ------------------------


def sync_caller(request: Request) -> str:
    return "x"


async def held(request: Request) -> AsyncIterator[str]:
    yield "x"


async def tenant(x_tenant: Annotated[str, Header()]) -> str:
    return x_tenant


def test_sync_dependency_taking_the_request_is_refused() -> None:
    router = APIRouter(route_class=LeanRoute)

    with pytest.raises(TypeError, match=r"lean route POST /sync: dependency sync_caller"):

        @router.post("/sync")
        async def sync(who: Annotated[str, Depends(sync_caller)]) -> str:
            return who


def test_generator_dependency_is_refused() -> None:
    router = APIRouter(route_class=LeanRoute)

    with pytest.raises(TypeError, match=r"POST /gen: dependency held is not a plain"):

        @router.post("/gen")
        async def gen(who: Annotated[str, Depends(held)]) -> str:
            return who


def test_dependency_with_a_header_parameter_is_refused() -> None:
    router = APIRouter(route_class=LeanRoute)

    with pytest.raises(TypeError, match=r"dependency tenant takes request parameters"):

        @router.get("/tenant")
        async def get_tenant(t: Annotated[str, Depends(tenant)]) -> str:
            return t


def test_embedded_and_second_bodies_are_refused() -> None:
    router = APIRouter(route_class=LeanRoute)

    with pytest.raises(TypeError, match=r"POST /embed: Body\(embed=True\)"):

        @router.post("/embed")
        async def embed(item: Annotated[Item, Body(embed=True)]) -> str:
            return item.name

    with pytest.raises(TypeError, match=r"POST /two: more than one body"):

        @router.post("/two")
        async def two(first: Item, second: Item) -> str:
            return first.name + second.name


def test_response_options_are_refused() -> None:
    router = APIRouter(route_class=LeanRoute)

    with pytest.raises(TypeError, match=r"GET /none: response_model_\* options"):

        @router.get("/none", response_model=Item, response_model_exclude_none=True)
        async def none() -> Item:
            return Item(name="a")

    with pytest.raises(TypeError, match=r"GET /text: a response_class"):

        @router.get("/text", response_class=PlainTextResponse)
        async def text() -> str:
            return "a"

    with pytest.raises(TypeError, match=r"GET /sync-endpoint: the endpoint is not"):

        @router.get("/sync-endpoint")
        def sync_endpoint() -> str:
            return "a"


def test_router_response_class_is_refused_when_included() -> None:
    app = ServiceApp()
    with pytest.raises(TypeError, match=r"POST /v1/items/\{item_id\}: a response_class"):
        app.include_router(_lean_router(), prefix="/v1", default_response_class=PlainTextResponse)
        app.index_lean_routes()


def test_front_door_refuses_to_start_when_a_lean_route_is_not_indexed() -> None:
    app = ServiceApp()
    app.include_router(_lean_router(), prefix="/v1")

    async def direct() -> str:
        return "a"

    # Added to the app itself, not through a router: the index cannot see it.
    app.router.add_api_route("/direct", direct, methods=["GET"], route_class_override=LeanRoute)
    with pytest.raises(RuntimeError, match=r"missing from the front door's index: GET /direct"):
        app.index_lean_routes()
