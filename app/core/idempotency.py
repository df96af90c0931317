"""`Idempotency-Key` on state-changing POSTs.

Same key + same body replays the stored response; same key + another body is 422
`idempotency-key-reused`; a second request while the first is in flight is 409
`idempotency-key-in-use`. Keys are scoped per user and path and kept `IDEMPOTENCY_TTL_HOURS`.
The stored response is written in the request's own transaction, so it exists exactly when
the effect does.
"""

from __future__ import annotations

import hashlib
from typing import Any

import asyncpg
import orjson
from asyncpg.pool import PoolConnectionProxy
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import Response
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.db import raw_connection
from app.core.headers import header
from app.core.locking import LockNamespace, try_xact_lock_sql
from app.core.problems import ProblemError, ValidationFailed
from app.core.security import Principal

HEADER = "Idempotency-Key"
# A plain connection or one borrowed from a pool (the worker purges through its pool).
Conn = asyncpg.Connection | PoolConnectionProxy
_HEADER_NAME = HEADER.lower().encode()

_LOCK = f"SELECT {try_xact_lock_sql(LockNamespace.IDEMPOTENCY, '$1::text')}"
_FIND = (
    "SELECT request_hash, status_code, body, location FROM idempotency_keys"
    " WHERE user_id = $1 AND route = $2 AND key = $3"
    " AND created_at > now() - make_interval(hours => $4)"
)
_STORE = (
    "INSERT INTO idempotency_keys"
    " (user_id, route, key, request_hash, status_code, body, location)"
    " VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7)"
    " ON CONFLICT (user_id, route, key) DO UPDATE SET request_hash = EXCLUDED.request_hash,"
    " status_code = EXCLUDED.status_code, body = EXCLUDED.body,"
    " location = EXCLUDED.location, created_at = now()"
)


# Keys past their TTL are never read again (`_FIND` ignores them; a new request with the key
# overwrites the row), so the worker deletes them, oldest first, through the index on
# `created_at`. The age is checked again on the row itself: a key stored anew meanwhile
# (same row, new `created_at`) stays.
_PURGE = """
WITH doomed AS MATERIALIZED (
    SELECT ctid FROM idempotency_keys
    WHERE created_at < now() - make_interval(hours => $1)
    ORDER BY created_at
    LIMIT $2
)
DELETE FROM idempotency_keys k USING doomed d
WHERE k.ctid = d.ctid AND k.created_at < now() - make_interval(hours => $1)
"""


async def purge_expired(conn: Conn, ttl_hours: int, limit: int) -> int:
    """Delete up to `limit` keys older than `ttl_hours`; returns how many went."""
    status: str = await conn.execute(_PURGE, ttl_hours, limit)
    return int(status.rsplit(" ", 1)[-1])


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


class IdempotencyKey:
    """Per-request handle: `begin()` takes the key (or replays), `remember()` stores the
    response, both on the request's own connection and transaction."""

    def __init__(
        self,
        principal: Principal,
        route: str,
        key: str | None,
        ttl: int,
        response: Response | None = None,
    ) -> None:
        self.response = response
        self.principal = principal
        self.route = route
        self.key = key
        self.ttl = ttl
        self.request_hash: str | None = None

    async def begin(self, conn: asyncpg.Connection, request_hash: str) -> None:
        """Take the key for this transaction; replays or refuses as the contract says."""
        if self.key is None:
            return
        self.request_hash = request_hash
        if not await conn.fetchval(_LOCK, f"{self.principal.id}:{self.route}:{self.key}"):
            raise IdempotencyKeyInUse()
        row = await conn.fetchrow(_FIND, self.principal.id, self.route, self.key, self.ttl)
        if row is None:
            return
        if row["request_hash"] != request_hash:
            raise IdempotencyKeyReused(
                "This Idempotency-Key was used with a different request body."
            )
        body = row["body"]
        raise IdempotentReplay(
            row["status_code"],
            orjson.loads(body) if isinstance(body, str) else body,
            row["location"],
        )

    async def remember(
        self, conn: asyncpg.Connection, status_code: int, payload: Any, location: str | None = None
    ) -> None:
        if self.key is None or self.request_hash is None:
            return
        if location is None and self.response is not None:
            # Routes set Location before remembering, so a replayed 201 carries it too.
            location = self.response.headers.get("location")
        await conn.execute(
            _STORE,
            self.principal.id,
            self.route,
            self.key,
            self.request_hash,
            status_code,
            orjson.dumps(jsonable_encoder(payload)).decode(),
            location,
        )


class Idempotency:
    """`IdempotencyKey` bound to the ORM session's connection, for routes that use `Session`."""

    def __init__(self, idem: IdempotencyKey, session: AsyncSession) -> None:
        self.idem = idem
        self.session = session

    @property
    def key(self) -> str | None:
        return self.idem.key

    async def begin(self, request_hash: str) -> None:
        await self.idem.begin(await raw_connection(self.session), request_hash)

    async def remember(self, status_code: int, payload: Any) -> None:
        await self.idem.remember(await raw_connection(self.session), status_code, payload)


def validated_key(request: Request) -> str | None:
    key = header(request, _HEADER_NAME)
    if key is None:
        return None
    if not 1 <= len(key) <= 255 or not key.isprintable():
        raise ValidationFailed(
            "Idempotency-Key must be 1 to 255 printable characters.",
            errors=[{"loc": ["header", HEADER], "msg": "invalid"}],
        )
    return key


async def body_hash(request: Request) -> str:
    """Idempotency for JSON bodies: the request hash is the SHA-256 of the raw body."""
    return hashlib.sha256(await request.body()).hexdigest()


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
