"""`LeanRoute`: FastAPI routes on the hot paths, called without FastAPI's per-request
dependency solving and response re-validation.

FastAPI still reads the endpoint's signature for the OpenAPI (parameters, body, security,
response model), so the route is documented exactly like any other. At request time the
handler built here calls the endpoint directly from a plan made once: path parameters and
the JSON body are validated with pydantic as FastAPI would (a bad one is the same 422
problem), each dependency is resolved from the request alone by its registered resolver,
and the returned model is serialised straight to JSON bytes.

A lean endpoint may take: path parameters, one body parameter, `Request`, `Response` (to
set headers or the status), and dependencies whose resolver is registered with
`resolve_with()` or that take the request only. Anything else fails when the route is
declared, not when it is called.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Annotated, Any, get_args, get_origin, get_type_hints

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.params import Body, Depends
from fastapi.routing import APIRoute
from pydantic import BaseModel, TypeAdapter, ValidationError
from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope, Send

Resolver = Callable[[Request], Awaitable[Any]]
_RESOLVERS: dict[Callable[..., Any], Resolver] = {}


def resolve_with(dependency: Callable[..., Any], resolver: Resolver) -> None:
    """Lean routes resolve `Depends(dependency)` by calling `resolver(request)`."""
    _RESOLVERS[dependency] = resolver


@dataclass(frozen=True, slots=True)
class _Param:
    name: str
    kind: str  # "path" | "body" | "request" | "response" | "dependency"
    adapter: TypeAdapter[Any] | None = None
    default: Any = None
    required: bool = False
    dependency: Callable[..., Any] | None = None
    resolver: Resolver | None = None


def _resolver_for(dependency: Callable[..., Any]) -> Resolver:
    if dependency in _RESOLVERS:
        return _RESOLVERS[dependency]
    params = list(inspect.signature(dependency).parameters.values())
    if len(params) == 1 and params[0].annotation in (Request, "Request"):
        return dependency
    raise TypeError(f"{dependency.__name__} has no resolver for lean routes")


def _plan(route: APIRoute) -> list[_Param]:
    hints = get_type_hints(route.endpoint, include_extras=True)
    path_names = set(route.param_convertors)
    plan = []
    for name, param in inspect.signature(route.endpoint).parameters.items():
        hint = hints[name]
        marker = None
        if get_origin(hint) is Annotated:
            hint, *extras = get_args(hint)
            marker = next((e for e in extras if isinstance(e, Depends | Body)), None)
        default = None if param.default is inspect.Parameter.empty else param.default
        if hint is Request:
            plan.append(_Param(name, "request"))
        elif hint is Response:
            plan.append(_Param(name, "response"))
        elif isinstance(marker, Depends):
            assert marker.dependency is not None
            resolver = _resolver_for(marker.dependency)
            plan.append(_Param(name, "dependency", dependency=marker.dependency, resolver=resolver))
        elif name in path_names:
            plan.append(_Param(name, "path", TypeAdapter(hint)))
        elif isinstance(marker, Body) or _is_model(hint):
            required = param.default is inspect.Parameter.empty
            plan.append(_Param(name, "body", TypeAdapter(hint), default, required))
        else:
            raise TypeError(f"lean route {route.path}: cannot resolve parameter {name!r}")
    return plan


def _is_model(hint: Any) -> bool:
    options = get_args(hint) or (hint,)
    return any(inspect.isclass(o) and issubclass(o, BaseModel) for o in options)


_MISSING_BODY = {"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}


def _invalid(exc: ValidationError, where: str, name: str | None = None) -> RequestValidationError:
    prefix: tuple[str, ...] = (where,) if name is None else (where, name)
    return RequestValidationError(
        [
            {**error, "loc": (*prefix, *error["loc"])}
            for error in exc.errors(include_url=False, include_context=False)
        ]
    )


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


class LeanRoute(APIRoute):
    """See the module docstring; use as `APIRouter(route_class=LeanRoute)`."""

    lean_handler: Callable[[Request], Coroutine[Any, Any, Response]]

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        plan = _plan(self)
        endpoint = self.endpoint
        status_code = self.status_code or 200
        output = TypeAdapter(self.response_model) if self.response_model else None

        async def handler(request: Request) -> Response:
            overrides = request.app.dependency_overrides
            kwargs: dict[str, Any] = {}
            sub: Response | None = None
            for p in plan:
                if p.kind == "path":
                    assert p.adapter is not None
                    try:
                        kwargs[p.name] = p.adapter.validate_python(request.path_params[p.name])
                    except ValidationError as exc:
                        raise _invalid(exc, "path", p.name) from None
                elif p.kind == "dependency":
                    assert p.dependency is not None and p.resolver is not None
                    resolve = overrides.get(p.dependency, p.resolver)
                    kwargs[p.name] = await resolve(request)
                elif p.kind == "body":
                    assert p.adapter is not None
                    raw = await _body(request)
                    if not raw.strip():
                        if p.required:
                            raise RequestValidationError([_MISSING_BODY])
                        kwargs[p.name] = p.default
                        continue
                    try:
                        kwargs[p.name] = p.adapter.validate_json(raw)
                    except ValidationError as exc:
                        raise _invalid(exc, "body") from None
                elif p.kind == "request":
                    kwargs[p.name] = request
                else:
                    sub = kwargs[p.name] = _SubResponse()
            result = await endpoint(**kwargs)
            if isinstance(result, Response):
                return result
            body = output.dump_json(result, by_alias=True) if output else b"null"
            if sub is None:
                return _JSONAnswer(body, status_code, [])
            extra = [h for h in sub.raw_headers if h[0] not in _SET_BY_ANSWER]
            return _JSONAnswer(body, sub.status_code or status_code, extra)

        self.lean_handler = handler
        return handler


_MATCHED = "couponflash.lean_handler"
_Entry = tuple[re.Pattern[str], dict[str, Any], Any, str]  # regex, convertors, handler, path


def _tail(template: str) -> str | None:
    """A route template's last segment, or None when it is a parameter."""
    last = template[template.rfind("/") + 1 :]
    return None if last.startswith("{") else last


class LeanIndex:
    """Lean routes by method, with their full paths, so a hot request is matched at once:
    no walk through every route of the app, no per-route middleware stack. `match` finds
    the route; the index is then the ASGI app that answers it. Errors are answered by the
    app's own exception handlers, exactly as on the ordinary path."""

    def __init__(self, app: FastAPI) -> None:
        self.handlers = app.exception_handlers
        self.table: dict[str, list[_Entry]] = {}
        for candidate in app.router.routes:
            contexts = getattr(candidate, "effective_route_contexts", None)
            for context in contexts() if contexts is not None else ():
                route = context.original_route
                if isinstance(route, LeanRoute):
                    for method in context.methods:
                        self.table.setdefault(method, []).append(
                            (
                                context.path_regex,
                                context.param_convertors,
                                route.lean_handler,
                                context.path_format,
                            )
                        )
        # The candidates for a request, by method and last path segment: the routes that
        # end in that literal segment and those that end in a parameter, in table order
        # (the first match wins, as in FastAPI's router).
        self._by_tail: dict[tuple[str, str | None], list[_Entry]] = {}
        for method, routes in self.table.items():
            tails = {_tail(route[3]) for route in routes}
            for tail in tails:
                self._by_tail[(method, tail)] = [r for r in routes if _tail(r[3]) in (tail, None)]

    def match(self, scope: Scope) -> bool:
        """Whether a lean route takes this request; if so, its path parameters and route
        template are set on the scope."""
        method, path = scope["method"], scope["path"]
        routes = self._by_tail.get((method, path[path.rfind("/") + 1 :])) or self._by_tail.get(
            (method, None)
        )
        if routes is None:
            return False
        for regex, convertors, handler, template in routes:
            found = regex.match(path)
            if found is None:
                continue
            scope["path_params"] = {
                name: convertors[name].convert(value) for name, value in found.groupdict().items()
            }
            scope["route_template"] = template
            scope[_MATCHED] = handler
            return True
        return False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer a request `match` accepted."""
        request = Request(scope, receive, send)
        try:
            response = await scope[_MATCHED](request)
        except Exception as exc:
            response = await self._answer(request, exc)
        await response(scope, receive, send)

    async def _answer(self, request: Request, exc: Exception) -> Response:
        for cls in type(exc).__mro__:
            handler = self.handlers.get(cls)
            if handler is not None:
                answer = handler(request, exc)
                return await answer if inspect.isawaitable(answer) else answer
        raise exc
