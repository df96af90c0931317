"""Console session cookies: the JWT in an HttpOnly cookie, and a readable CSRF cookie that
scripts echo in `X-CSRF-Token` (double submit) and forms echo in a hidden field."""

from __future__ import annotations

import hmac
import secrets
import uuid

from fastapi import Request, Response

from app.api.services import services_of
from app.core.problems import ProblemError
from app.core.security import CSRF_COOKIE, SESSION_COOKIE, Principal, Role


def is_https(request: Request) -> bool:
    return request.url.scheme == "https"


def new_csrf_token() -> str:
    return secrets.token_urlsafe(32)


def csrf_token(request: Request) -> str:
    """The CSRF cookie's value, or a fresh one (set it with `set_csrf_cookie`)."""
    return request.cookies.get(CSRF_COOKIE) or new_csrf_token()


def csrf_matches(request: Request, submitted: str) -> bool:
    expected = request.cookies.get(CSRF_COOKIE, "")
    return bool(expected) and hmac.compare_digest(expected, submitted)


def set_csrf_cookie(request: Request, response: Response, token: str) -> None:
    # Readable by the console's scripts on purpose: they copy it into a header.
    response.set_cookie(
        CSRF_COOKIE,
        token,
        httponly=False,
        samesite="strict",
        secure=is_https(request),
        path="/",
    )


def set_session_cookie(request: Request, response: Response, token: str, max_age: int) -> None:
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=max_age,
        httponly=True,
        samesite="strict",
        secure=is_https(request),
        path="/",
    )


def clear_session(request: Request, response: Response) -> None:
    for name in (SESSION_COOKIE, CSRF_COOKIE):
        response.delete_cookie(
            name, path="/", samesite="strict", secure=is_https(request), httponly=True
        )


async def viewer(request: Request) -> Principal | None:
    """Who holds the session cookie, if its token is valid (our own tokens only)."""
    token = request.cookies.get(SESSION_COOKIE)
    if not token:
        return None
    try:
        claims = await services_of(request).tokens.verify(token)
        if claims.get("_external"):
            return None
        return Principal(id=uuid.UUID(str(claims["sub"])), role=Role(str(claims.get("role"))))
    except (ProblemError, ValueError, KeyError):
        return None


def safe_next(target: str | None, default: str) -> str:
    """Only same-site paths: `/x` but never `//host` or `/\\host`, so login is no open redirect."""
    if not target or not target.startswith("/") or target.startswith(("//", "/\\")):
        return default
    return target
