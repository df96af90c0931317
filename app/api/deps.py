"""The dependencies routes declare, each defined once: who calls (`CurrentUser`,
`AdminUser`), the request's transaction (`Tx` on a bare asyncpg connection for the hot
paths, `Session` through the ORM for the rest), `Idempotent`, and the services built at
start-up. Lean routes (app/core/lean.py) resolve these same functions, in the same order."""

from __future__ import annotations

import contextlib
import hmac
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, cast

from fastapi import Depends, Request, Response
from fastapi.security import HTTPBearer
from sqlalchemy.ext.asyncio import AsyncSession

from app.api.services import Services, services_of
from app.core.audit import AuditTrail
from app.core.clientip import client_address
from app.core.db import Database, apply_timeouts, commit
from app.core.headers import header
from app.core.idempotency import Idempotency, IdempotencyKey, body_hash, validated_key
from app.core.lockout import GuessWatch
from app.core.problems import Forbidden, Unauthenticated
from app.core.ratelimit import RateLimits
from app.core.security import (
    CSRF_COOKIE,
    CSRF_HEADER,
    SESSION_COOKIE,
    Principal,
    Role,
    TokenService,
)
from app.core.settings import Settings
from app.core.transaction import Acquire, Acquired, Transaction

_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_PRINCIPAL = "couponflash.principal"


class _BearerScheme(HTTPBearer):
    """Declares the bearer scheme in the OpenAPI; `current_user` reads and verifies the
    token itself (or the web console's session cookie)."""

    async def __call__(self, request: Request) -> None:  # type: ignore[override]
        return None


_bearer = _BearerScheme(auto_error=False, description="JWT from POST /api/v1/auth/token")


async def get_services(request: Request) -> Services:
    return services_of(request)


async def get_settings(request: Request) -> Settings:
    return services_of(request).settings


async def get_database(request: Request) -> Database:
    return services_of(request).db


async def get_token_service(request: Request) -> TokenService:
    return services_of(request).tokens


async def get_rate_limits(request: Request) -> RateLimits:
    return services_of(request).rate_limits


async def current_user(request: Request, _: Annotated[None, Depends(_bearer)]) -> Principal:
    """The verified caller; no database round trip for our own tokens.

    A bearer header wins; otherwise the web console's HttpOnly session cookie is accepted,
    and then every unsafe method must echo the CSRF cookie in the `X-CSRF-Token` header.
    """
    token = _bearer_token(request) or _cookie_token(request)
    services = services_of(request)
    claims = await services.tokens.verify(token)
    if claims.get("_external"):
        sub = str(claims["sub"])
        role = services.tokens.external_role(dict(claims))
        email = claims.get("email")
        user_id = await services.external_users.user_id(
            sub, email if isinstance(email, str) else None, role
        )
        return Principal(id=user_id, role=role, external_sub=sub)
    principal: Principal | None = claims.get(_PRINCIPAL)
    if principal is None:  # the token's own principal, made when it was first verified
        try:
            principal = Principal(
                id=uuid.UUID(str(claims["sub"])), role=Role(str(claims.get("role")))
            )
        except (ValueError, KeyError) as exc:
            raise Unauthenticated("The token's subject or role is invalid.") from exc
        claims[_PRINCIPAL] = principal
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


CurrentUser = Annotated[Principal, Depends(current_user)]


async def admin_user(user: CurrentUser) -> Principal:
    if not user.is_admin:
        raise Forbidden("This needs the admin role.")
    return user


AdminUser = Annotated[Principal, Depends(admin_user)]


async def audit_trail(request: Request, admin: AdminUser) -> AuditTrail:
    """The admin's audit trail for this request (app/core/audit.py)."""
    return AuditTrail(admin.id, str(request.scope.get("state", {}).get("request_id", "")))


Audit = Annotated[AuditTrail, Depends(audit_trail)]


async def connection_source(request: Request) -> Acquire:
    """Where request transactions get their connection: the asyncpg pool. (The test suite
    overrides it with its own rolled-back connection, like any dependency.)"""
    db = services_of(request).db
    pool = db.pool or await db.sql_pool()
    return lambda: cast(Acquired, pool.acquire())


def _idempotency_key(
    request: Request, user: Principal, response: Response | None
) -> IdempotencyKey:
    ttl = services_of(request).settings.idempotency_ttl_hours
    return IdempotencyKey(user, request.scope["path"], validated_key(request), ttl, response)


async def transaction(
    request: Request,
    user: CurrentUser,
    acquire: Annotated[Acquire, Depends(connection_source)],
) -> Transaction:
    """The request's `Transaction` on a bare asyncpg connection (see core/transaction.py)."""
    idem = _idempotency_key(request, user, None)
    request_hash = await body_hash(request) if idem.key is not None else ""
    return Transaction(acquire, services_of(request).db, idem, request_hash)


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    """One transaction per request, committed when the endpoint returns and before the
    response is sent (the dependency has function scope), rolled back on any error."""
    db = services_of(request).db
    async with db.sessionmaker() as session:
        await session.begin()
        if db.timeouts_per_transaction:
            await apply_timeouts(session, db)
        try:
            yield session
        except BaseException:
            # The request's own error is the answer, even if the connection is gone too.
            with contextlib.suppress(Exception):
                await session.rollback()
            raise
        await commit(session)


Session = Annotated[AsyncSession, Depends(get_session, scope="function")]


async def idempotency(
    request: Request, response: Response, session: Session, user: CurrentUser
) -> Idempotency:
    """The request's `Idempotency-Key`, taken (or replayed) in the session's transaction."""
    idem = Idempotency(_idempotency_key(request, user, response), session)
    if idem.key is not None:
        await idem.begin(await body_hash(request))
    return idem


async def upload_idempotency(
    request: Request, response: Response, session: Session, user: CurrentUser
) -> Idempotency:
    """Idempotency for streamed uploads: the caller calls `begin()` with the file's hash."""
    return Idempotency(_idempotency_key(request, user, response), session)


async def guess_watch(
    request: Request,
    user: CurrentUser,
    acquire: Annotated[Acquire, Depends(connection_source)],
) -> GuessWatch:
    """The caller's lockout keys (user and client address) for counting failed lookups."""
    services = services_of(request)
    address = client_address(request, services.lockouts.trusted_proxies)
    return GuessWatch(services.lockouts, (f"user:{user.id}", f"ip:{address}"), acquire)


Tx = Annotated[Transaction, Depends(transaction)]
Guesses = Annotated[GuessWatch, Depends(guess_watch)]
Idempotent = Annotated[Idempotency, Depends(idempotency)]
IdempotentUpload = Annotated[Idempotency, Depends(upload_idempotency)]
RateLimit = Annotated[RateLimits, Depends(get_rate_limits)]
Tokens = Annotated[TokenService, Depends(get_token_service)]
DB = Annotated[Database, Depends(get_database)]
AppSettings = Annotated[Settings, Depends(get_settings)]
AppServices = Annotated[Services, Depends(get_services)]
