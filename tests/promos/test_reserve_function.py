"""A reserve is one round trip: one call of `promo_reserve`, which takes the caller's lock and
claims in statements of its own. Without an `Idempotency-Key` the call is its own transaction
(no BEGIN, no COMMIT); with a key it runs inside the transaction that stores the key's record.
The function in the schema is the one the code writes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI, Request

from app.api.deps import connection_source
from app.core.db import libpq_url
from app.core.security import Role
from app.core.settings import Settings
from app.core.transaction import Acquire
from app.promos.reservations import RESERVE_FUNCTION_BODY
from tests.conftest import MakeUser
from tests.helpers import ApiUser
from tests.promos.support import create_promo, placed_users, random_point


async def test_the_schema_holds_the_function_the_code_writes(pg: asyncpg.Connection) -> None:
    body = await pg.fetchval("SELECT prosrc FROM pg_proc WHERE proname = 'promo_reserve'")
    assert body == RESERVE_FUNCTION_BODY, (
        "promo_reserve in the schema differs from app.promos.reservations.RESERVE_FUNCTION:"
        " write a migration that replaces it"
    )


@pytest.fixture
def statements(app: FastAPI, settings: Settings) -> Iterator[list[str]]:
    """Every statement the requests' SQL routes send, in order: each request gets a
    connection of its own that logs them."""
    sent: list[str] = []

    @asynccontextmanager
    async def logged() -> AsyncIterator[Any]:
        conn = await asyncpg.connect(libpq_url(settings.database_url or ""))
        conn.add_query_logger(lambda record: sent.append(record.query))
        try:
            yield conn
        finally:
            await conn.close()

    async def source(request: Request) -> Acquire:
        return logged

    app.dependency_overrides[connection_source] = source
    try:
        yield sent
    finally:
        app.dependency_overrides.pop(connection_source, None)


async def _placed(
    app: FastAPI, live_client: httpx.AsyncClient, make_live_user: MakeUser
) -> tuple[str, ApiUser]:
    admin = await make_live_user(Role.admin)
    lat, lng = random_point()
    promo = await create_promo(live_client, admin, at=(lat, lng), quantity=5)
    [user] = await placed_users(app, 1, lat, lng)
    return promo["id"], user


async def test_without_a_key_a_reserve_is_one_statement(
    app: FastAPI,
    live_client: httpx.AsyncClient,
    make_live_user: MakeUser,
    statements: list[str],
) -> None:
    promo_id, user = await _placed(app, live_client, make_live_user)
    statements.clear()
    answer = await live_client.post(f"/api/v1/promos/{promo_id}/reserve", headers=user.headers)
    assert answer.status_code == 201, answer.text
    assert statements == ["SELECT * FROM promo_reserve($1, $2, $3)"]
    again = await live_client.post(f"/api/v1/promos/{promo_id}/reserve", headers=user.headers)
    assert (again.status_code, again.json()["id"]) == (200, answer.json()["id"])


async def test_with_a_key_the_call_commits_with_the_keys_record(
    app: FastAPI,
    live_client: httpx.AsyncClient,
    make_live_user: MakeUser,
    statements: list[str],
) -> None:
    promo_id, user = await _placed(app, live_client, make_live_user)
    statements.clear()
    headers = {**user.headers, "Idempotency-Key": "reserve-once"}
    answer = await live_client.post(f"/api/v1/promos/{promo_id}/reserve", headers=headers)
    assert answer.status_code == 201, answer.text
    calls = [i for i, s in enumerate(statements) if "promo_reserve" in s]
    assert len(calls) == 1, statements
    assert statements[0].startswith("BEGIN") and statements[-1] == "COMMIT;", statements
    replay = await live_client.post(f"/api/v1/promos/{promo_id}/reserve", headers=headers)
    assert replay.headers.get("Idempotent-Replayed") == "true"
    assert replay.json() == answer.json()
