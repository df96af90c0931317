"""Pure ASGI middleware: request id, metrics, security headers, body limits, last-resort errors."""

from __future__ import annotations

import os
import time

import structlog
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core import tracing
from app.core.metrics import IN_FLIGHT, record_request
from app.core.problems import PROBLEM_BASE_KEY, problem_response, unhandled_error_response

log = structlog.get_logger("access")

_SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
]


class RequestContextMiddleware:
    """The one middleware of ours, outermost: binds a request id (from `X-Request-ID` or
    new), echoes it, adds security headers, refuses bodies over the limit with 413 (by
    `Content-Length` or while streaming; the CSV upload route takes the larger upload
    limit), answers unhandled errors, records metrics by route template and logs requests
    that failed on our side. One layer, so each request pays for one wrapper of each kind."""

    def __init__(
        self,
        app: ASGIApp,
        max_body: int = 1_048_576,
        max_upload: int = 1_048_576,
        problem_base: str = "/problems",
    ) -> None:
        self.app = app
        self.max_body = max_body
        self.max_upload = max_upload
        self.problem_base = problem_base

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        tracer = tracing.TRACER
        if tracer is not None:
            await tracing.traced_request(tracer, self._serve, scope, receive, send, _route_template)
            return
        await self._serve(scope, receive, send)

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        request_id = ""
        content_type = b""
        declared: int | None = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                request_id = value.decode("latin-1")[:128]
            elif name == b"content-type":
                content_type = value.lower()
            elif name == b"content-length" and value.isdigit():
                declared = int(value)
        request_id = request_id or os.urandom(16).hex()
        scope.setdefault("state", {})["request_id"] = request_id
        scope[PROBLEM_BASE_KEY] = self.problem_base
        structlog.contextvars.bind_contextvars(request_id=request_id)
        upload = content_type.startswith(_UPLOAD_TYPES) and scope["path"].endswith(_UPLOAD_PATHS)
        limit = self.max_upload if upload else self.max_body
        stream = scope["path"].endswith(_STREAM_PATH)
        if stream:
            IN_FLIGHT.streams += 1
        else:
            IN_FLIGHT.requests += 1
        t0 = time.perf_counter()
        status = 500
        started = False
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _TooLarge(limit)
            return message

        async def send_wrapper(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                started = True
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode("latin-1")))
                headers.extend(_SECURITY_HEADERS)
                message["headers"] = headers
            await send(message)

        try:
            if declared is not None and declared > limit:
                raise _TooLarge(limit)
            await self.app(scope, limited_receive, send_wrapper)
        except Exception as exc:
            # Answer errors here rather than in Starlette's outermost handler, so the answer
            # carries the request id and security headers like every other one.
            if started:
                raise
            if isinstance(exc, _TooLarge):
                response = problem_response(
                    None,
                    status=413,
                    slug="payload-too-large",
                    detail=exc.detail,
                    base=self.problem_base,
                    instance=scope["path"],
                )
            else:
                response = await unhandled_error_response(Request(scope), exc)
            await response(scope, receive, send_wrapper)
        finally:
            if stream:
                IN_FLIGHT.streams -= 1
            else:
                IN_FLIGHT.requests -= 1
            elapsed = time.perf_counter() - t0
            template = _route_template(scope)
            method = scope["method"]
            record_request(method, template, status, elapsed)
            if status >= 500:
                log.warning(
                    "request",
                    method=method,
                    path=scope["path"],
                    status=status,
                    ms=round(elapsed * 1000, 1),
                )
            structlog.contextvars.unbind_contextvars("request_id")


def _route_template(scope: Scope) -> str:
    """The matched route's full path template (bounded label cardinality)."""
    if "route_template" in scope:
        return str(scope["route_template"])
    effective = scope.get("fastapi", {}).get("effective_route_context")
    template = getattr(effective, "path_format", None)
    if template is None:
        template = getattr(scope.get("route"), "path", None)
    return str(template) if template else "<unmatched>"


# Server-sent event streams stay open: counted apart from requests in flight.
_STREAM_PATH = "/notifications/stream"

# Only the CSV upload routes (synchronous and as a job) take the larger limit, whatever
# Content-Type a client claims.
_UPLOAD_PATHS = ("/codes", "/imports")
_UPLOAD_TYPES = (b"text/csv", b"text/plain", b"multipart/form-data", b"application/octet-stream")


class _TooLarge(StarletteHTTPException):
    """An HTTPException, so the problem handlers answer it even mid-parse."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"The request body is larger than {limit} bytes.")
