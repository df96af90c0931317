"""The yardstick for `make bench`: the service's own hot-path SQL behind a bare Starlette +
asyncpg app — no auth (the user comes from `X-User-Id`), no ORM, no middleware, no
validation beyond what the SQL needs. Not a product; it answers "what do the statements
alone cost?" so the service can be measured as a ratio of it.

Run: REF_DATABASE_URL=postgresql://… uvicorn bench.reference_app:app --workers 2
"""

from __future__ import annotations

import asyncio
import os
import random
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.books.assign import _ASSIGN_RANDOM, LOCK_BOOK_USER
from app.books.redeem import _LOCK as LOCK_CODE
from app.books.redeem import _LOCK_HOLDER, _REDEEM
from app.core.db import keep_session
from app.core.locking import CLAIM_RETRY_DELAYS
from app.promos.listings import _ELIGIBLE
from app.promos.reservations import _CLAIM, _PURCHASE, _RELEASE
from app.promos.reservations import _LOCK as LOCK_PROMO_USER

CODE_FIELDS = (
    "code",
    "book_id",
    "status",
    "user_id",
    "assigned_at",
    "locked_until",
    "redemptions",
    "redemptions_left",
)
POOL: dict[str, asyncpg.Pool] = {}


def _json(body: Mapping[str, Any], status: int = 200) -> Response:
    return Response(orjson.dumps(body, default=str), status, media_type="application/json")


def _user(request: Request) -> uuid.UUID:
    return uuid.UUID(request.headers["x-user-id"])


async def _claim_random(
    conn: asyncpg.Connection, book_id: uuid.UUID, user_id: uuid.UUID
) -> asyncpg.Record:
    """The claim from a random start, run again while free rows exist but were all locked."""
    for pause in [*CLAIM_RETRY_DELAYS, None]:
        start = random.random()
        row = await conn.fetchrow(_ASSIGN_RANDOM, book_id, user_id, start, user_id, "{}")
        assert row is not None
        if pause is None or row["code"] is not None or not row["allowed"] or not row["free_left"]:
            return row
        await asyncio.sleep(pause * (0.5 + random.random()))
    raise AssertionError("unreachable")


async def assign(request: Request) -> Response:
    book_id, user_id = uuid.UUID(request.path_params["book_id"]), _user(request)
    await request.body()
    async with POOL["pool"].acquire() as conn, conn.transaction():
        await conn.execute(LOCK_BOOK_USER, book_id, user_id)
        row = await _claim_random(conn, book_id, user_id)
    if row["code"] is None:
        return _json({"type": "/problems/book-exhausted"}, 409)
    return _json({k: row[k] for k in CODE_FIELDS}, 201)


async def lock(request: Request) -> Response:
    code, user_id = request.path_params["code"].upper(), _user(request)
    await request.body()
    async with POOL["pool"].acquire() as conn, conn.transaction():
        row = await conn.fetchrow(LOCK_CODE, code, user_id, None, None, user_id)
    if row is None:
        return _json({"type": "/problems/code-locked"}, 409)
    return _json({**{k: row[k] for k in CODE_FIELDS}, "lock_id": row["lock_id"]})


async def redeem(request: Request) -> Response:
    code, user_id = request.path_params["code"].upper(), _user(request)
    body = orjson.loads(await request.body() or b"{}")
    lock_id = uuid.UUID(body["lock_id"]) if body.get("lock_id") else None
    async with POOL["pool"].acquire() as conn, conn.transaction():
        await conn.execute(_LOCK_HOLDER, code)
        row = await conn.fetchrow(_REDEEM, code, user_id, lock_id, user_id, "{}")
    if row is None:
        return _json({"type": "/problems/code-locked"}, 409)
    return _json(dict(row))


async def reserve(request: Request) -> Response:
    promo_id, user_id = uuid.UUID(request.path_params["promo_id"]), _user(request)
    await request.body()
    async with POOL["pool"].acquire() as conn, conn.transaction():
        await conn.execute(LOCK_PROMO_USER, promo_id, user_id)
        row = await conn.fetchrow(_CLAIM, promo_id, user_id, 60)
        if row is not None and row["release_first"]:
            await conn.execute(_RELEASE, promo_id, user_id)
            row = await conn.fetchrow(_CLAIM, promo_id, user_id, 60)
    if row is None or (row["hold_id"] is None and row["live_id"] is None):
        return _json({"type": "/problems/sold-out"}, 409)
    if row["live_id"] is not None:
        return _json(
            {
                "id": row["live_id"],
                "promo_id": promo_id,
                "expires_at": row["live_expires_at"],
                "status": "held",
            }
        )
    return _json(
        {
            "id": row["hold_id"],
            "promo_id": promo_id,
            "expires_at": row["hold_expires_at"],
            "status": "held",
        },
        201,
    )


async def purchase(request: Request) -> Response:
    reservation_id, user_id = uuid.UUID(request.path_params["reservation_id"]), _user(request)
    await request.body()
    async with POOL["pool"].acquire() as conn, conn.transaction():
        row = await conn.fetchrow(_PURCHASE, reservation_id, user_id)
    if row is None or row["new_status"] is None:
        return _json({"type": "/problems/reservation-expired"}, 409)
    return _json(
        {
            "id": row["id"],
            "promo_id": row["promo_id"],
            "expires_at": row["expires_at"],
            "status": "purchased",
        }
    )


async def my_promos(request: Request) -> Response:
    async with POOL["pool"].acquire() as conn:
        rows = await conn.fetch(_ELIGIBLE, _user(request), 50)
    return Response(
        orjson.dumps([dict(r) for r in rows], default=str), media_type="application/json"
    )


async def healthz(request: Request) -> Response:
    return _json({"status": "ok"})


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    size = int(os.environ.get("REF_POOL_SIZE", "10"))
    POOL["pool"] = await asyncpg.create_pool(
        os.environ["REF_DATABASE_URL"],
        min_size=size,
        max_size=size,
        server_settings={"lock_timeout": "2000ms", "statement_timeout": "15000ms"},
        reset=keep_session,  # the service's pool setting: no session reset on release
    )
    yield
    await POOL["pool"].close()


app = Starlette(
    routes=[
        Route("/healthz", healthz),
        Route("/api/v1/books/{book_id}/assign", assign, methods=["POST"]),
        Route("/api/v1/codes/{code}/lock", lock, methods=["POST"]),
        Route("/api/v1/codes/{code}/redeem", redeem, methods=["POST"]),
        Route("/api/v1/promos/{promo_id}/reserve", reserve, methods=["POST"]),
        Route("/api/v1/reservations/{reservation_id}/purchase", purchase, methods=["POST"]),
        Route("/api/v1/me/promos", my_promos),
    ],
    lifespan=lifespan,
)
