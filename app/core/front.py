"""The service's ASGI entry. A request for a hot route (`LeanRoute`) goes straight to it,
behind the same middleware as every other request (request context, CORS); the rest take
FastAPI's whole stack. Hot requests so skip five ASGI layers that add nothing for them
(FastAPI's and Starlette's entry, the last-resort error page, telemetry, the body limit
that ours already enforces) and the walk through the route table."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from app.core.lean import LeanIndex


class ServiceApp(FastAPI):
    """FastAPI with the front door above; `index_lean_routes()` opens it once every router
    is included (the lifespan calls it). Until then every request takes the full stack,
    where lean routes answer the same."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._lean: tuple[LeanIndex, ASGIApp] | None = None

    def index_lean_routes(self) -> None:
        index = LeanIndex(self)
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
