"""Who is calling: `CurrentUser` and `AdminUser` dependencies."""

from __future__ import annotations

import asyncio
import hmac
import uuid
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.db import Database, apply_timeouts, create_engine
from app.core.headers import header
from app.core.lean import resolve_with
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
    """The verified caller (`credentials` declares the bearer scheme in the OpenAPI)."""
    return await authenticate(request)


_PRINCIPAL = "couponflash.principal"


async def authenticate(request: Request) -> Principal:
    """The verified caller, once per request; no database round trip for our own tokens.

    A bearer header wins; otherwise the web console's HttpOnly session cookie is accepted,
    and then every unsafe method must echo the CSRF cookie in the `X-CSRF-Token` header.
    """
    known: Principal | None = request.scope.get(_PRINCIPAL)
    if known is not None:
        return known
    token = _bearer_token(request) or _cookie_token(request)
    tokens = token_service(request)
    claims = await tokens.verify(token)
    if claims.get("_external"):
        principal = await _external_principal(request, tokens, claims)
    elif (cached := claims.get(_PRINCIPAL)) is not None:
        principal = cached  # the token's own principal, made when it was first verified
    else:
        try:
            principal = Principal(
                id=uuid.UUID(str(claims["sub"])), role=Role(str(claims.get("role")))
            )
        except (ValueError, KeyError) as exc:
            raise Unauthenticated("The token's subject or role is invalid.") from exc
        claims[_PRINCIPAL] = principal
    request.scope[_PRINCIPAL] = principal
    return principal


def _bearer_token(request: Request) -> str | None:
    scheme, _, token = (header(request, b"authorization") or "").partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


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
        email = claims.get("email")
        provisioner = _provisioner(request)
        async with provisioner.slots, provisioner.sessionmaker() as session, session.begin():
            if provisioner.db.timeouts_per_transaction:
                await apply_timeouts(session, provisioner.db)
            user = await provision_external(
                session, sub, email if isinstance(email, str) else None, role
            )
            user_id = user.id
        cache[(sub, role)] = user_id
    return Principal(id=user_id, role=role, external_sub=sub)


@dataclass
class _Provisioner:
    """Creates the local users of new external subjects on connections of their own, outside
    the pool: a request may already hold its pooled connection when its caller is resolved,
    and once every pooled connection is held by such a request, each would wait for a second
    one until the pool timeout (503). A few at a time, so a burst of new subjects opens few
    connections; each subject once per process (the cache above)."""

    db: Database
    sessionmaker: async_sessionmaker[AsyncSession]
    slots: asyncio.Semaphore


_PROVISIONING_CONNECTIONS = 4


def _provisioner(request: Request) -> _Provisioner:
    state = request.app.state
    provisioner: _Provisioner | None = getattr(state, "external_provisioner", None)
    if provisioner is None:
        engine = create_engine(state.settings, pooled=False)
        provisioner = _Provisioner(
            db=state.db,
            sessionmaker=async_sessionmaker(engine, expire_on_commit=False, autoflush=False),
            slots=asyncio.Semaphore(_PROVISIONING_CONNECTIONS),
        )
        state.external_provisioner = provisioner
    return provisioner


async def get_admin(user: Annotated[Principal, Depends(get_current_user)]) -> Principal:
    if not user.is_admin:
        raise Forbidden("This needs the admin role.")
    return user


CurrentUser = Annotated[Principal, Depends(get_current_user)]
AdminUser = Annotated[Principal, Depends(get_admin)]
Tokens = Annotated[TokenService, Depends(get_token_service)]


async def admin_of(request: Request) -> Principal:
    """`get_admin` from the request alone (for lean routes)."""
    return await get_admin(await authenticate(request))


resolve_with(get_current_user, authenticate)
resolve_with(get_admin, admin_of)
