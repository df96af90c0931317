"""`Idempotency-Key` on state-changing POSTs.

Same key + same body replays the stored response; same key + another body is 422
`idempotency-key-reused`; a second request while the first is in flight is 409
`idempotency-key-in-use`. Keys are scoped per user and path and kept `IDEMPOTENCY_TTL_HOURS`.
The stored response is written in the request's own transaction, so it exists exactly when
the effect does.
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Any

import orjson
from fastapi import Depends, FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import Response
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth.deps import CurrentUser
from app.core.db import Session
from app.core.locking import LockNamespace, try_xact_lock_sql
from app.core.problems import ProblemError, ValidationFailed
from app.core.security import Principal

HEADER = "Idempotency-Key"

_LOCK = text(f"SELECT {try_xact_lock_sql(LockNamespace.IDEMPOTENCY, ':lock_key')}")
_FIND = text(
    "SELECT request_hash, status_code, body, location FROM idempotency_keys"
    " WHERE user_id = :user_id AND route = :route AND key = :key"
    " AND created_at > now() - make_interval(hours => :ttl)"
)
_STORE = text(
    "INSERT INTO idempotency_keys"
    " (user_id, route, key, request_hash, status_code, body, location)"
    " VALUES (:user_id, :route, :key, :hash, :status, CAST(:body AS jsonb), :location)"
    " ON CONFLICT (user_id, route, key) DO UPDATE SET request_hash = EXCLUDED.request_hash,"
    " status_code = EXCLUDED.status_code, body = EXCLUDED.body,"
    " location = EXCLUDED.location, created_at = now()"
)


class IdempotencyKeyInUse(ProblemError):
    status, slug, title = 409, "idempotency-key-in-use", "Idempotency key in use"

    def __init__(self) -> None:
        super().__init__(
            "A request with this Idempotency-Key is still running; retry shortly.",
            headers={"Retry-After": "1"},
        )


class IdempotencyKeyReused(ProblemError):
    status, slug, title = 422, "idempotency-key-reused", "Idempotency key reused"


class IdempotentReplay(Exception):
    """Raised to answer with a stored response; the request's transaction does nothing."""

    def __init__(self, status_code: int, body: Any, location: str | None = None) -> None:
        self.status_code = status_code
        self.body = body
        self.location = location


class Idempotency:
    """Per-request handle: `remember()` stores the response if the client sent a key."""

    def __init__(
        self,
        session: AsyncSession,
        principal: Principal,
        route: str,
        key: str | None,
        ttl: int,
        response: Response | None = None,
    ) -> None:
        self.response = response
        self.session = session
        self.principal = principal
        self.route = route
        self.key = key
        self.ttl = ttl
        self.request_hash: str | None = None

    async def begin(self, request_hash: str) -> None:
        """Take the key for this transaction; replays or refuses as the contract says."""
        if self.key is None:
            return
        self.request_hash = request_hash
        lock_key = f"{self.principal.id}:{self.route}:{self.key}"
        got = (await self.session.execute(_LOCK, {"lock_key": lock_key})).scalar_one()
        if not got:
            raise IdempotencyKeyInUse()
        row = (
            await self.session.execute(
                _FIND,
                {
                    "user_id": self.principal.id,
                    "route": self.route,
                    "key": self.key,
                    "ttl": self.ttl,
                },
            )
        ).first()
        if row is None:
            return
        if row.request_hash != request_hash:
            raise IdempotencyKeyReused(
                "This Idempotency-Key was used with a different request body."
            )
        raise IdempotentReplay(row.status_code, row.body, row.location)

    async def remember(self, status_code: int, payload: Any) -> None:
        if self.key is None or self.request_hash is None:
            return
        body = orjson.dumps(jsonable_encoder(payload)).decode()
        await self.session.execute(
            _STORE,
            {
                "user_id": self.principal.id,
                "route": self.route,
                "key": self.key,
                "hash": self.request_hash,
                "status": status_code,
                "body": body,
                # Routes set Location before remembering, so a replayed 201 carries it too.
                "location": self.response.headers.get("location") if self.response else None,
            },
        )


def _validated_key(request: Request) -> str | None:
    key = request.headers.get(HEADER)
    if key is None:
        return None
    if not 1 <= len(key) <= 255 or not key.isprintable():
        raise ValidationFailed(
            "Idempotency-Key must be 1 to 255 printable characters.",
            errors=[{"loc": ["header", HEADER], "msg": "invalid"}],
        )
    return key


async def get_idempotency(
    request: Request, response: Response, session: Session, user: CurrentUser
) -> Idempotency:
    """Idempotency for JSON bodies: the request hash is the SHA-256 of the raw body."""
    ttl: int = request.app.state.settings.idempotency_ttl_hours
    idem = Idempotency(session, user, request.url.path, _validated_key(request), ttl, response)
    if idem.key is not None:
        await idem.begin(hashlib.sha256(await request.body()).hexdigest())
    return idem


async def get_upload_idempotency(
    request: Request, response: Response, session: Session, user: CurrentUser
) -> Idempotency:
    """Idempotency for streamed uploads: the caller calls `begin()` with the file's hash."""
    ttl: int = request.app.state.settings.idempotency_ttl_hours
    return Idempotency(session, user, request.url.path, _validated_key(request), ttl, response)


Idempotent = Annotated[Idempotency, Depends(get_idempotency)]
IdempotentUpload = Annotated[Idempotency, Depends(get_upload_idempotency)]


async def _on_replay(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, IdempotentReplay)
    headers = {"Idempotent-Replayed": "true"}
    if exc.location:
        headers["Location"] = exc.location
    return Response(
        orjson.dumps(exc.body),
        status_code=exc.status_code,
        media_type="application/json",
        headers=headers,
    )


def install_idempotency_handler(app: FastAPI) -> None:
    app.add_exception_handler(IdempotentReplay, _on_replay)
