"""`LeanRoute`: FastAPI routes on the hot paths, answered from a plan made once instead of
FastAPI's per-request dependency solving and response re-validation.

FastAPI still reads the endpoint for the OpenAPI (parameters, body, security, response
model), so the route is documented exactly like any other. The plan is made from the same
`Dependant` tree FastAPI builds, route and router dependencies included: path parameters
and the JSON body are validated with pydantic as FastAPI would (a bad one is the same 422
problem, a body that is not JSON by its `Content-Type` too), dependencies are awaited in
FastAPI's order with its per-request cache, and the returned value is serialised straight
to JSON bytes.

The plan fails closed: anything it does not honour is refused when the route is declared
(or included), with a `TypeError` naming the route and the reason: query, header, cookie or
form parameters, more than one body or `Body(embed=True)`, `response_model_*` options, a
`response_class`, a per-route body limit, and dependencies that are not `async def` or that
take anything but the request and other dependencies. `app.dependency_overrides` are
honoured: an overridden tree is planned again with the overrides, and one the plan cannot
take is answered by FastAPI's own handler. An app whose `lean_routes` attribute is false
answers every lean route with FastAPI's own handler (`LEAN_ROUTES=false`).
"""

from __future__ import annotations

import email.message
import inspect
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

from fastapi import Request, Response
from fastapi.datastructures import DefaultPlaceholder
from fastapi.dependencies.models import Dependant
from fastapi.dependencies.utils import get_dependant
from fastapi.exceptions import RequestValidationError
from fastapi.params import Body, File, Form
from fastapi.responses import JSONResponse

# FastAPI builds an included route's handler with its inclusion (prefix, router
# dependencies, overrides provider) in this context variable, and reads it in
# `APIRoute.get_route_handler`; so does `LeanRoute`. It is private: the versions it works
# with are pinned in pyproject.toml, and a FastAPI without it fails at import.
from fastapi.routing import APIRoute, _effective_route_context_var
from pydantic import TypeAdapter, ValidationError
from starlette.requests import ClientDisconnect

from app.core.headers import header

Handler = Callable[[Request], Coroutine[Any, Any, Response]]
_REQUEST = -1  # an argument taken from the request itself, not from a dependency


@dataclass(frozen=True, slots=True)
class _Step:
    """Await `call` with these keyword arguments: each the request or an earlier result."""

    call: Callable[..., Awaitable[Any]]
    args: tuple[tuple[str, int], ...]


@dataclass(frozen=True, slots=True)
class _Body:
    name: str
    adapter: TypeAdapter[Any]
    required: bool
    default: Any


@dataclass(frozen=True, slots=True)
class _Plan:
    steps: tuple[_Step, ...]
    endpoint_args: tuple[tuple[str, int], ...]  # dependency results the endpoint takes
    calls: frozenset[Callable[..., Any]]  # every dependency of the tree, as declared


def _refuse(where: str, reason: str) -> NoReturn:
    raise TypeError(f"lean route {where}: {reason}; declare it on an ordinary APIRouter")


def _is_async(call: Any) -> bool:
    if inspect.isclass(call):
        return False
    if inspect.iscoroutinefunction(call):
        return True
    dunder = getattr(call, "__call__", None)  # noqa: B004 - a callable object's method
    return not inspect.isfunction(call) and inspect.iscoroutinefunction(dunder)


class _Planner:
    """Flattens a dependency tree into awaited steps, each call once (FastAPI's cache)."""

    def __init__(self, where: str, overrides: Mapping[Any, Any]) -> None:
        self.where = where
        self.overrides = overrides
        self.steps: list[_Step] = []
        self.index: dict[Any, int] = {}
        self.calls: set[Any] = set()

    def dependency(self, node: Dependant) -> int:
        declared = node.call
        self.calls.add(declared)
        call = self.overrides.get(declared, declared)
        if call is not declared:
            node = get_dependant(path=node.path or "", call=call, name=node.name, scope=node.scope)
        name = getattr(call, "__name__", type(call).__name__)
        if not node.use_cache:
            _refuse(self.where, f"dependency {name} has use_cache=False")
        if call in self.index:
            return self.index[call]
        if not _is_async(call):
            _refuse(self.where, f"dependency {name} is not a plain `async def`")
        if node.path_params or node.query_params or node.header_params or node.cookie_params:
            _refuse(self.where, f"dependency {name} takes request parameters")
        if node.body_params:
            _refuse(self.where, f"dependency {name} takes a body")
        _no_special_parameters(self.where, node, f"dependency {name}", response=False)
        args = self.sub_dependencies(node)
        if node.request_param_name:
            args.insert(0, (node.request_param_name, _REQUEST))
        self.steps.append(_Step(call, tuple(args)))
        self.index[call] = len(self.steps) - 1
        return self.index[call]

    def sub_dependencies(self, node: Dependant) -> list[tuple[str, int]]:
        args = []
        for sub in node.dependencies:
            result = self.dependency(sub)
            if sub.name is not None:  # route and router dependencies have no name
                args.append((sub.name, result))
        return args


def _no_special_parameters(where: str, node: Dependant, what: str, *, response: bool) -> None:
    special = {
        "BackgroundTasks": node.background_tasks_param_name,
        "SecurityScopes": node.security_scopes_param_name,
        "WebSocket": node.websocket_param_name,
        "HTTPConnection": node.http_connection_param_name,
        "Response": None if response else node.response_param_name,
    }
    for kind, name in special.items():
        if name is not None:
            _refuse(where, f"{what} takes a {kind}")


def _plan(where: str, dependant: Dependant, overrides: Mapping[Any, Any]) -> _Plan:
    planner = _Planner(where, overrides)
    endpoint_args = planner.sub_dependencies(dependant)
    return _Plan(tuple(planner.steps), tuple(endpoint_args), frozenset(planner.calls))


def _check_route(where: str, route: Any) -> None:
    """Refuse the route options a lean handler does not honour."""
    if (
        route.response_model_include is not None
        or route.response_model_exclude is not None
        or route.response_model_exclude_unset
        or route.response_model_exclude_defaults
        or route.response_model_exclude_none
        or not route.response_model_by_alias
    ):
        _refuse(where, "response_model_* options are not supported")
    response_class = route.response_class
    if not (
        isinstance(response_class, DefaultPlaceholder) and response_class.value is JSONResponse
    ):
        _refuse(where, "a response_class is not supported")
    if getattr(route, "max_body_size", None) is not None:
        _refuse(where, "a per-route max_body_size is not supported")
    if getattr(route, "is_sse_stream", False) or getattr(route, "is_json_stream", False):
        _refuse(where, "streamed responses are not supported")
    if not inspect.iscoroutinefunction(route.endpoint):
        _refuse(where, "the endpoint is not an `async def`")
    dependant: Dependant = route.dependant
    if dependant.query_params or dependant.header_params or dependant.cookie_params:
        _refuse(where, "query, header and cookie parameters are not supported")
    _no_special_parameters(where, dependant, "the endpoint", response=True)


def _body_of(where: str, dependant: Dependant) -> _Body | None:
    fields = dependant.body_params
    if not fields:
        return None
    if len(fields) > 1:
        _refuse(where, "more than one body parameter is not supported")
    info = fields[0].field_info
    if isinstance(info, Form | File):
        _refuse(where, "form and file bodies are not supported")
    if isinstance(info, Body) and info.embed:
        _refuse(where, "Body(embed=True) is not supported")
    required = info.is_required()
    default = None if required else info.get_default(call_default_factory=True)
    return _Body(
        fields[0].name,
        _adapter(info.annotation),
        required,
        default,
    )


def _adapter(annotation: Any) -> TypeAdapter[Any]:
    return TypeAdapter(Any if annotation is None else annotation)


def _strict(route: Any) -> bool:
    value = route.strict_content_type
    return bool(value.value if isinstance(value, DefaultPlaceholder) else value)


def _is_json(content_type: str | None, strict: bool) -> bool:
    """FastAPI's rule for parsing a body as JSON, by its `Content-Type`."""
    if content_type is None:
        return not strict
    if content_type == "application/json":
        return True
    message = email.message.Message()
    message["content-type"] = content_type
    if message.get_content_maintype() != "application":
        return False
    subtype = message.get_content_subtype()
    return subtype == "json" or subtype.endswith("+json")


_MISSING_BODY = {"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}


def _located(exc: ValidationError, *loc: str) -> list[dict[str, Any]]:
    """Pydantic's errors with their location prefixed, as FastAPI reports them."""
    return [
        {**error, "loc": (*loc, *error["loc"])}
        for error in exc.errors(include_url=False, include_context=False)
    ]


class _SubResponse(Response):
    """The `Response` an endpoint may take to set headers or the status: no body, no
    default headers; its status stays 0 unless the endpoint sets one."""

    def __init__(self) -> None:
        self.status_code = 0
        self.raw_headers = []
        self.background = None


_SET_BY_ANSWER = frozenset({b"content-type", b"content-length"})


class _JSONAnswer(Response):
    """A lean route's JSON answer, its headers written directly (Starlette's `Response`
    works them out from its arguments on every request)."""

    media_type = "application/json"

    def __init__(self, body: bytes, status_code: int, extra: list[tuple[bytes, bytes]]) -> None:
        self.body = body
        self.status_code = status_code
        self.background = None
        self.raw_headers = [
            (b"content-length", str(len(body)).encode()),
            (b"content-type", b"application/json"),
            *extra,
        ]


async def _body(request: Request) -> bytes:
    """The request body, read straight from `receive` (Starlette's `Request.body()` goes
    through an async generator per chunk) and kept where `Request.body()` finds it."""
    cached: bytes | None = getattr(request, "_body", None)
    if cached is not None:
        return cached
    chunks: list[bytes] = []
    more = True
    while more:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    body = request._body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    return body


class LeanHandler:
    """A lean route's handler for one inclusion of the route (see the module docstring)."""

    def __init__(self, route: Any, plain: Handler) -> None:
        self.where = f"{','.join(sorted(route.methods))} {route.path}"
        _check_route(self.where, route)
        dependant: Dependant = route.dependant
        self.plain = plain
        self.provider = route.dependency_overrides_provider
        self.endpoint = route.endpoint
        self.status_code = route.status_code or 200
        self.output = TypeAdapter(route.response_model) if route.response_model else None
        self.strict = _strict(route)
        self.path = tuple(
            (
                f.alias,
                f.name,
                _adapter(f.field_info.annotation),
            )
            for f in dependant.path_params
        )
        self.body = _body_of(self.where, dependant)
        self.request_name = dependant.request_param_name
        self.response_name = dependant.response_param_name
        self.dependant = dependant
        self.plan = _plan(self.where, dependant, {})
        self._overridden: dict[tuple[tuple[Any, Any], ...], _Plan | None] = {}

    @property
    def calls(self) -> frozenset[Callable[..., Any]]:
        """Every dependency of the route as declared (what an override may replace)."""
        return self.plan.calls

    def overridden(self, overrides: Mapping[Any, Any]) -> bool:
        return bool(overrides) and not self.plan.calls.isdisjoint(overrides)

    def _plan_with(self, overrides: Mapping[Any, Any]) -> _Plan | None:
        """The plan with these overrides in place, or None if the plan cannot take them."""
        key = tuple((call, overrides[call]) for call in self.plan.calls if call in overrides)
        if key not in self._overridden:
            try:
                self._overridden[key] = _plan(self.where, self.dependant, overrides)
            except TypeError:
                self._overridden[key] = None
        return self._overridden[key]

    async def __call__(self, request: Request) -> Response:
        if not getattr(request.scope["app"], "lean_routes", True):
            return await self.plain(request)
        plan = self.plan
        provider = self.provider
        if provider is not None and self.overridden(provider.dependency_overrides):
            overridden = self._plan_with(provider.dependency_overrides)
            if overridden is None:
                return await self.plain(request)
            plan = overridden
        # FastAPI's order: the body is read (JSON that does not parse is refused at once),
        # then the dependencies run (so 401 and 403 come first), then the path parameters and
        # the body are validated and every error is answered in one 422.
        kwargs: dict[str, Any] = {}
        errors: list[dict[str, Any]] = []
        if self.body is not None:
            kwargs[self.body.name] = await self._read_body(request, self.body, errors)
        results: list[Any] = []
        for step in plan.steps:
            results.append(
                await step.call(
                    **{name: request if i == _REQUEST else results[i] for name, i in step.args}
                )
            )
        for name, i in plan.endpoint_args:
            kwargs[name] = results[i]
        path_errors: list[dict[str, Any]] = []
        for alias, name, adapter in self.path:
            try:
                kwargs[name] = adapter.validate_python(request.path_params[alias])
            except ValidationError as exc:
                path_errors.extend(_located(exc, "path", alias))
        if path_errors or errors:
            raise RequestValidationError([*path_errors, *errors])
        if self.request_name is not None:
            kwargs[self.request_name] = request
        sub: Response | None = None
        if self.response_name is not None:
            sub = kwargs[self.response_name] = _SubResponse()
        result = await self.endpoint(**kwargs)
        if isinstance(result, Response):
            return result
        body = self.output.dump_json(result, by_alias=True) if self.output else b"null"
        if sub is None:
            return _JSONAnswer(body, self.status_code, [])
        extra = [h for h in sub.raw_headers if h[0] not in _SET_BY_ANSWER]
        return _JSONAnswer(body, sub.status_code or self.status_code, extra)

    async def _read_body(self, request: Request, spec: _Body, errors: list[dict[str, Any]]) -> Any:
        """The validated body; its validation errors go to `errors`, to be answered with the
        path's, but a body that is not JSON at all is refused at once (400), as FastAPI does."""
        raw = await _body(request)
        if not raw:
            if spec.required:
                errors.append(_MISSING_BODY)
            return spec.default
        try:
            if _is_json(header(request, b"content-type"), self.strict):
                return spec.adapter.validate_json(raw)
            # Not JSON by its content type: FastAPI validates the raw bytes, and fails.
            return spec.adapter.validate_python(raw, from_attributes=True)
        except ValidationError as exc:
            located = _located(exc, "body")
            if any(error["type"] == "json_invalid" for error in located):
                raise RequestValidationError(located) from None
            errors.extend(located)
            return None


class LeanRoute(APIRoute):
    """See the module docstring; use as `APIRouter(route_class=LeanRoute)`.

    FastAPI asks for a handler once when the route is declared and once per inclusion
    (prefix, router dependencies); `lean_handlers` keeps each by its full path template."""

    lean_handlers: dict[str, LeanHandler]

    def get_route_handler(self) -> Handler:
        context = _effective_route_context_var.get()
        route: Any = context if context is not None and context.original_route is self else self
        plain = super().get_route_handler()
        handler = LeanHandler(route, plain)
        self.__dict__.setdefault("lean_handlers", {})[route.path_format] = handler
        return handler.__call__
