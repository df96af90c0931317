"""RFC 9457 problem details: every error response of the service is made here."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

import asyncpg
import orjson
import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from sqlalchemy.exc import DBAPIError, InterfaceError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException

log = structlog.get_logger(__name__)

PROBLEM_MEDIA_TYPE = "application/problem+json"


class ProblemError(Exception):
    """A failure the client should see: a status, a stable slug, a human sentence."""

    status: int = 400
    slug: str = "bad-request"
    title: str | None = None

    def __init__(
        self,
        detail: str | None = None,
        *,
        status: int | None = None,
        slug: str | None = None,
        title: str | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        if status is not None:
            self.status = status
        if slug is not None:
            self.slug = slug
        if title is not None:
            self.title = title
        self.detail = detail or self.title or HTTPStatus(self.status).phrase
        self.headers = headers or {}
        self.extra = extra
        super().__init__(self.detail)


class NotFound(ProblemError):
    status, slug, title = 404, "not-found", "Not found"


class Forbidden(ProblemError):
    status, slug, title = 403, "forbidden", "Forbidden"


class Unauthenticated(ProblemError):
    status, slug, title = 401, "unauthenticated", "Authentication required"

    def __init__(self, detail: str | None = None, **extra: Any) -> None:
        super().__init__(detail, headers={"WWW-Authenticate": "Bearer"}, **extra)


class Conflict(ProblemError):
    status, slug, title = 409, "conflict", "Conflict"


class BadRequest(ProblemError):
    status, slug, title = 400, "bad-request", "Bad request"


class UnsupportedMediaType(ProblemError):
    status, slug, title = 415, "unsupported-media-type", "Unsupported media type"


class ValidationFailed(ProblemError):
    status, slug, title = 422, "validation-error", "Validation error"


class RateLimited(ProblemError):
    status, slug, title = 429, "rate-limited", "Too many requests"


class Busy(ProblemError):
    status, slug, title = 409, "busy", "Busy, retry shortly"

    def __init__(self, detail: str | None = None, retry_after: int = 1) -> None:
        super().__init__(detail, headers={"Retry-After": str(retry_after)})


class Unavailable(ProblemError):
    status, slug, title = 503, "unavailable", "Service unavailable"

    def __init__(self, detail: str | None = None, retry_after: int = 2) -> None:
        super().__init__(detail, headers={"Retry-After": str(retry_after)})


class OutcomeUnknown(Unavailable):
    """The connection was lost while COMMIT was in flight: the effect may or may not be
    stored. Never a success and never a definite failure; the same request with the same
    `Idempotency-Key` answers the stored response if it was, or does it once if it was not."""

    def __init__(self) -> None:
        super().__init__(
            "The database connection was lost while the change was being committed; it may or"
            " may not have been applied. Retry with the same Idempotency-Key."
        )
        self.extra = {"outcome": "unknown"}


_SLUG_BY_STATUS = {
    400: "bad-request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not-found",
    405: "method-not-allowed",
    409: "conflict",
    413: "payload-too-large",
    415: "unsupported-media-type",
    422: "validation-error",
    429: "rate-limited",
    500: "internal-error",
    503: "unavailable",
}


def problem_response(
    request: Request | None,
    *,
    status: int,
    slug: str,
    detail: str,
    title: str | None = None,
    headers: dict[str, str] | None = None,
    base: str = "/problems",
    **extra: Any,
) -> Response:
    body: dict[str, Any] = {
        "type": f"{base.rstrip('/')}/{slug}",
        "title": title or HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
    }
    if request is not None:
        body["instance"] = request.url.path
    body.update(extra)
    return Response(
        orjson.dumps(body, default=str),
        status_code=status,
        media_type=PROBLEM_MEDIA_TYPE,
        headers=headers,
    )


PROBLEM_BASE_KEY = "couponflash.problem_base"  # set on each request by the request middleware


def _base(request: Request) -> str:
    base: str = request.scope.get(PROBLEM_BASE_KEY, "/problems")
    return base


SQLSTATE_LOCK_TIMEOUT = "55P03"
SQLSTATE_STATEMENT_TIMEOUT = "57014"
SQLSTATE_SERIALIZATION = "40001"
SQLSTATE_DEADLOCK = "40P01"
SQLSTATE_TOO_MANY_CONNECTIONS = "53300"
# A write reached a server that is (or became) a standby: a failover is under way.
SQLSTATE_READ_ONLY = "25006"


def sqlstate_of(exc: BaseException) -> str | None:
    """The SQLSTATE behind an asyncpg or SQLAlchemy-wrapped error, if any."""
    seen: BaseException | None = exc
    for _ in range(6):
        if seen is None:
            return None
        code = getattr(seen, "sqlstate", None) or getattr(seen, "pgcode", None)
        if isinstance(code, str):
            return code
        seen = getattr(seen, "orig", None) or seen.__cause__
    return None


def wrong_server(exc: BaseException) -> bool:
    """A connection to a server that cannot take writes: a read-only (standby) server
    answered, or none of a multi-host URL's hosts matched `target_session_attrs`."""
    seen: BaseException | None = exc
    for _ in range(6):
        if seen is None:
            return False
        if isinstance(seen, asyncpg.TargetServerAttributeNotMatched):
            return True
        if getattr(seen, "sqlstate", None) == SQLSTATE_READ_ONLY:
            return True
        seen = getattr(seen, "orig", None) or seen.__cause__
    return False


def _protocol_broken(exc: BaseException) -> bool:
    """asyncpg's connection state left mid-operation: seen when the server crashed (every
    backend ends with 57P02) while the connection was in use or idle in the pool. The
    connection is unusable and is closed; nothing was committed on it."""
    return isinstance(exc, asyncpg.InternalClientError) and "another operation" in str(exc)


def _driver_connection_lost(exc: BaseException) -> bool:
    """An asyncpg interface error about a connection that is gone (the server restarted or
    dropped it), including one raised while cleaning up after the loss, e.g. ending the
    transaction of a connection that died mid-statement: the loss is then only its context.
    Interface errors of another kind (misuse of a live connection) stay bugs."""
    seen: BaseException | None = exc
    for _ in range(6):
        if isinstance(seen, asyncpg.PostgresConnectionError):
            return True
        if not isinstance(seen, asyncpg.InterfaceError):
            return False
        if str(seen).endswith("connection is closed"):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def problem_for_database_error(exc: BaseException) -> ProblemError | None:
    """Map database failures a client can recover from; None means it is a bug."""
    state = sqlstate_of(exc)
    if state == SQLSTATE_LOCK_TIMEOUT:
        return Busy("The resource is locked by another request; retry shortly.")
    if state in (SQLSTATE_SERIALIZATION, SQLSTATE_DEADLOCK):
        return Busy("A concurrent update won; retry the request.")
    if state in (SQLSTATE_STATEMENT_TIMEOUT, SQLSTATE_TOO_MANY_CONNECTIONS):
        return Unavailable("The database is overloaded; retry shortly.")
    if state == SQLSTATE_READ_ONLY or wrong_server(exc):
        return Unavailable("The database is changing primaries; retry shortly.")
    if state is not None and state.startswith(("08", "57P")):
        return Unavailable("The database is unreachable; retry shortly.")
    if isinstance(exc, PoolTimeoutError):
        return Unavailable("All database connections are busy; retry shortly.")
    if isinstance(exc, InterfaceError | ConnectionError | OSError):
        return Unavailable("The database is unreachable; retry shortly.")
    if _protocol_broken(exc):
        return Unavailable("The database connection was lost; retry shortly.")
    if _driver_connection_lost(exc):
        return Unavailable("The database connection was lost; retry shortly.")
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return Unavailable("The database connection was lost; retry shortly.")
    cause = exc.__cause__
    if (
        cause is not None
        and type(cause).__module__.startswith("asyncpg")
        and ("connection" in type(cause).__name__.lower())
    ):
        return Unavailable("The database is unreachable; retry shortly.")
    return None


def _validation_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    errors = []
    for err in exc.errors():
        errors.append({"loc": list(err.get("loc", ())), "msg": err.get("msg", "invalid")})
    return errors


async def _on_problem(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ProblemError)
    return problem_of(request, exc)


def problem_of(request: Request, exc: ProblemError) -> Response:
    """The response for a problem; a route returns it instead of raising when its
    transaction must still commit (a failed login's count, a revoked token family)."""
    return problem_response(
        request,
        status=exc.status,
        slug=exc.slug,
        title=exc.title,
        detail=exc.detail,
        headers=exc.headers,
        base=_base(request),
        **exc.extra,
    )


async def _on_validation(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errs = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errs):
        return problem_response(
            request,
            status=400,
            slug="bad-request",
            detail="The request body is not valid JSON.",
            base=_base(request),
        )
    return problem_response(
        request,
        status=422,
        slug="validation-error",
        title="Validation error",
        detail="The request is invalid; see errors.",
        base=_base(request),
        errors=_validation_errors(exc),
    )


async def _on_http(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    status = exc.status_code
    slug = _SLUG_BY_STATUS.get(status, "bad-request" if status < 500 else "internal-error")
    headers = dict(exc.headers or {})
    if status == 401:
        headers.setdefault("WWW-Authenticate", "Bearer")
    detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(status).phrase
    if status == 404 and detail == "Not Found":
        detail = f"No resource at {request.url.path}."
    if status == 405:
        detail = f"{request.method} is not allowed on {request.url.path}."
    return problem_response(
        request, status=status, slug=slug, detail=detail, headers=headers, base=_base(request)
    )


async def unhandled_error_response(request: Request, exc: Exception) -> Response:
    """503 for a database that is away, else a logged 500 with no internals."""
    return await _on_unhandled(request, exc)


async def _on_unhandled(request: Request, exc: Exception) -> Response:
    mapped = problem_for_database_error(exc)
    if mapped is not None:
        log.warning("database_unavailable", error=type(exc).__name__, sqlstate=sqlstate_of(exc))
        return await _on_problem(request, mapped)
    log.exception("unhandled_error", path=request.url.path)
    return problem_response(
        request,
        status=500,
        slug="internal-error",
        title="Internal error",
        detail="An unexpected error occurred; it has been logged.",
        base=_base(request),
        request_id=request.headers.get("x-request-id")
        or getattr(request.state, "request_id", None),
    )


def install_problem_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ProblemError, _on_problem)
    app.add_exception_handler(RequestValidationError, _on_validation)
    app.add_exception_handler(StarletteHTTPException, _on_http)
    app.add_exception_handler(DBAPIError, _on_unhandled)
    app.add_exception_handler(PoolTimeoutError, _on_unhandled)
    app.add_exception_handler(OSError, _on_unhandled)
    app.add_exception_handler(asyncpg.PostgresError, _on_unhandled)
    app.add_exception_handler(asyncpg.InterfaceError, _on_unhandled)
    app.add_exception_handler(Exception, _on_unhandled)
