"""The service's ASGI entry. A request for a hot route (`LeanRoute`) goes straight to its
handler, behind the same middleware as every other request (request context, CORS); the
rest take FastAPI's whole stack. Hot requests so skip the ASGI layers that add nothing for
them (FastAPI's and Starlette's entry, the last-resort error page, telemetry, the body
limit that ours already enforces) and the walk through the route table.

The index reads FastAPI's route contexts (`effective_route_contexts`), an internal of the
FastAPI versions pinned in pyproject.toml. It fails closed: an app whose lean routes are
not all indexed refuses to start, and a request whose route has a dependency override, or
any request while `lean_routes` is off, takes the whole stack.
"""

from __future__ import annotations

import inspect
import re
from typing import Any

from fastapi import APIRouter, FastAPI, Request, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from app.core.lean import LeanHandler, LeanRoute

_MATCHED = "couponflash.lean_handler"
_Entry = tuple[
    re.Pattern[str], dict[str, Any], LeanHandler, str
]  # regex, convertors, handler, path


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
        self.app = app
        self.table: dict[str, list[_Entry]] = {}
        for candidate in app.router.routes:
            contexts = getattr(candidate, "effective_route_contexts", None)
            for context in contexts() if contexts is not None else ():
                route = context.original_route
                if not isinstance(route, LeanRoute):
                    continue
                handler = route.lean_handlers.get(context.path_format)
                if handler is None:
                    raise RuntimeError(f"lean route {context.path_format} has no handler")
                for method in context.methods:
                    self.table.setdefault(method, []).append(
                        (context.path_regex, context.param_convertors, handler, context.path_format)
                    )
        # The candidates for a request, by method and last path segment: the routes that
        # end in that literal segment and those that end in a parameter, in table order
        # (the first match wins, as in FastAPI's router).
        self._by_tail: dict[tuple[str, str | None], list[_Entry]] = {}
        for method, routes in self.table.items():
            tails = {_tail(route[3]) for route in routes}
            for tail in tails:
                self._by_tail[(method, tail)] = [r for r in routes if _tail(r[3]) in (tail, None)]

    def templates(self) -> set[tuple[str, str]]:
        return {(method, entry[3]) for method, entries in self.table.items() for entry in entries}

    def match(self, scope: Scope) -> bool:
        """Whether a lean route takes this request; if so, its path parameters and route
        template are set on the scope. A route with a dependency override is left to the
        whole stack, where its handler honours the override."""
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
            if handler.overridden(self.app.dependency_overrides):
                return False
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
            handler = self.app.exception_handlers.get(cls)
            if handler is not None:
                answer = handler(request, exc)
                return await answer if inspect.isawaitable(answer) else answer
        raise exc


class ServiceApp(FastAPI):
    """FastAPI with the front door above; `index_lean_routes()` opens it once every router
    is included (the lifespan calls it). Until then every request takes the full stack,
    where lean routes answer the same. `lean_routes=False` keeps the door shut and makes
    every lean route answer with FastAPI's own handler."""

    def __init__(self, *args: Any, lean_routes: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lean_routes = lean_routes
        self._lean: tuple[LeanIndex, ASGIApp] | None = None
        self._expected: set[tuple[str, str]] = set()

    def include_router(self, router: APIRouter, *args: Any, **kwargs: Any) -> None:
        """FastAPI's, noting the lean routes included, which the index must then hold."""
        super().include_router(router, *args, **kwargs)
        prefix = kwargs.get("prefix", "")
        for route in router.routes:
            if isinstance(route, LeanRoute):
                self._expected |= {(m, prefix + route.path_format) for m in route.methods or ()}

    def index_lean_routes(self) -> None:
        """Open the front door; refuse to start if a lean route was not indexed."""
        if not self.lean_routes:
            return
        index = LeanIndex(self)
        expected = set(self._expected)
        for route in self.router.routes:  # lean routes added to the app itself
            if isinstance(route, LeanRoute):
                expected |= {(m, route.path_format) for m in route.methods or ()}
        missing = expected - index.templates()
        if missing:
            names = ", ".join(f"{m} {p}" for m, p in sorted(missing))
            raise RuntimeError(f"lean routes missing from the front door's index: {names}")
        front: ASGIApp = index
        for cls, args, kwargs in reversed(self.user_middleware):
            front = cls(front, *args, **kwargs)
        self._lean = (index, front)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        lean = self._lean
        if lean is not None and scope["type"] == "http" and lean[0].match(scope):
            scope["app"] = self
            await lean[1](scope, receive, send)
            return
        await super().__call__(scope, receive, send)
