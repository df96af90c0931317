"""Who is calling: `CurrentUser` and `AdminUser` dependencies."""

from __future__ import annotations

import hmac
import uuid
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.core.problems import Forbidden, Unauthenticated
from app.core.security import (
    CSRF_COOKIE,
    CSRF_HEADER,
    SESSION_COOKIE,
    Principal,
    Role,
    TokenService,
)

_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_bearer = HTTPBearer(auto_error=False, description="JWT from POST /api/v1/auth/token")


def token_service(request: Request) -> TokenService:
    tokens: TokenService = request.app.state.tokens
    return tokens


async def get_token_service(request: Request) -> TokenService:
    return token_service(request)


async def get_current_user(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """The verified caller; no database round trip for our own tokens.

    A bearer header wins; otherwise the web console's HttpOnly session cookie is accepted,
    and then every unsafe method must echo the CSRF cookie in the `X-CSRF-Token` header.
    """
    if credentials is not None and credentials.scheme.lower() == "bearer":
        token = credentials.credentials
    else:
        token = _cookie_token(request)
    tokens = token_service(request)
    claims = await tokens.verify(token)
    if claims.get("_external"):
        return await _external_principal(request, tokens, claims)
    try:
        return Principal(id=uuid.UUID(str(claims["sub"])), role=Role(str(claims.get("role"))))
    except (ValueError, KeyError) as exc:
        raise Unauthenticated("The token's subject or role is invalid.") from exc


def _cookie_token(request: Request) -> str:
    token = request.cookies.get(SESSION_COOKIE)
    if not token:
        raise Unauthenticated("A bearer token is required.")
    if request.method not in _SAFE_METHODS:
        expected = request.cookies.get(CSRF_COOKIE, "")
        given = request.headers.get(CSRF_HEADER, "")
        if not expected or not hmac.compare_digest(expected, given):
            raise Forbidden("The CSRF token is missing or wrong.")
    return token


async def _external_principal(
    request: Request, tokens: TokenService, claims: dict[str, object]
) -> Principal:
    from app.auth.service import provision_external

    sub = str(claims["sub"])
    role = tokens.external_role(dict(claims))
    cache: dict[tuple[str, Role], uuid.UUID] = request.app.state.external_users
    user_id = cache.get((sub, role))
    if user_id is None:
        db = request.app.state.db
        async with db.sessionmaker() as session, session.begin():
            email = claims.get("email")
            user = await provision_external(
                session, sub, email if isinstance(email, str) else None, role
            )
            user_id = user.id
        cache[(sub, role)] = user_id
    return Principal(id=user_id, role=role, external_sub=sub)


def require_role(role: Role) -> Callable[[Principal], Awaitable[Principal]]:
    """A dependency that lets through `role` (and admins, who may do anything)."""

    async def guard(user: Annotated[Principal, Depends(get_current_user)]) -> Principal:
        if user.role is not role and not user.is_admin:
            raise Forbidden(f"This needs the {role.value} role.")
        return user

    return guard


async def get_admin(user: Annotated[Principal, Depends(get_current_user)]) -> Principal:
    if not user.is_admin:
        raise Forbidden("This needs the admin role.")
    return user


CurrentUser = Annotated[Principal, Depends(get_current_user)]
AdminUser = Annotated[Principal, Depends(get_admin)]
Tokens = Annotated[TokenService, Depends(get_token_service)]
