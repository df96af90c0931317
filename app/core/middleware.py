"""Pure ASGI middleware: request id + access log + metrics, security headers, body limits."""

from __future__ import annotations

import time
import uuid

import structlog
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.metrics import HTTP_LATENCY, HTTP_REQUESTS
from app.core.problems import problem_response, unhandled_error_response

log = structlog.get_logger("access")

_SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
]


class RequestContextMiddleware:
    """Binds a request id (from `X-Request-ID` or new), echoes it, adds security headers,
    records metrics by route template and logs one line per request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = ""
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                request_id = value.decode("latin-1")[:128]
                break
        request_id = request_id or uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        structlog.contextvars.bind_contextvars(request_id=request_id)
        t0 = time.perf_counter()
        status = 500

        started = False

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
            await self.app(scope, receive, send_wrapper)
        except Exception as exc:
            # Answer unhandled errors here rather than in Starlette's outermost handler, so
            # the 500 carries the request id and security headers like every other answer.
            if started:
                raise
            response = await unhandled_error_response(Request(scope), exc)
            await response(scope, receive, send_wrapper)
        finally:
            elapsed = time.perf_counter() - t0
            template = _route_template(scope)
            method = scope["method"]
            HTTP_REQUESTS.labels(method, template, str(status)).inc()
            HTTP_LATENCY.labels(method, template).observe(elapsed)
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
    effective = scope.get("fastapi", {}).get("effective_route_context")
    template = getattr(effective, "path_format", None)
    if template is None:
        template = getattr(scope.get("route"), "path", None)
    return str(template) if template else "<unmatched>"


# Only the CSV upload route takes the larger limit, whatever Content-Type a client claims.
_UPLOAD_PATHS = ("/codes",)
_UPLOAD_TYPES = (b"text/csv", b"text/plain", b"multipart/form-data", b"application/octet-stream")


class BodyLimitMiddleware:
    """Refuses bodies over the limit with 413, by `Content-Length` or while streaming.
    Uploads (CSV, multipart) get the larger upload limit."""

    def __init__(
        self, app: ASGIApp, max_body: int, max_upload: int, problem_base: str = "/problems"
    ) -> None:
        self.app = app
        self.max_body = max_body
        self.max_upload = max_upload
        self.problem_base = problem_base

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        content_type = b""
        declared: int | None = None
        for name, value in scope["headers"]:
            if name == b"content-type":
                content_type = value.lower()
            elif name == b"content-length" and value.isdigit():
                declared = int(value)
        upload = content_type.startswith(_UPLOAD_TYPES) and scope["path"].endswith(_UPLOAD_PATHS)
        limit = self.max_upload if upload else self.max_body
        if declared is not None and declared > limit:
            await self._reject(scope, receive, send, limit, self.problem_base)
            return
        received = 0
        response_started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _TooLarge(limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not response_started:
                await self._reject(scope, receive, send, limit, self.problem_base)

    @staticmethod
    async def _reject(scope: Scope, receive: Receive, send: Send, limit: int, base: str) -> None:
        response = problem_response(
            None,
            status=413,
            slug="payload-too-large",
            detail=f"The request body is larger than {limit} bytes.",
            base=base,
            instance=scope["path"],
        )
        await response(scope, receive, send)


class _TooLarge(StarletteHTTPException):
    """An HTTPException, so the problem handlers answer it even mid-parse."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"The request body is larger than {limit} bytes.")
