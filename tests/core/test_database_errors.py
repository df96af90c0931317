"""Database failures a client can recover from answer 409 `busy` / 503 with Retry-After."""

from __future__ import annotations

import time
import uuid

import asyncpg
import httpx
from fastapi import FastAPI
from sqlalchemy import text

from app.core.problems import problem_for_database_error
from app.core.security import Role
from tests.conftest import MakeUser
from tests.helpers import assert_problem, started


async def test_row_held_by_another_transaction_is_409_busy_in_bounded_time(
    live_client: httpx.AsyncClient, make_live_user: MakeUser, app: FastAPI
) -> None:
    admin = await make_live_user(Role.admin)
    created = await live_client.post(
        "/api/v1/segments", json={"name": "locked", "kind": "static"}, headers=admin.headers
    )
    segment_id = created.json()["id"]
    async with app.state.db.engine.connect() as holder:
        await holder.begin()
        await holder.execute(
            text("SELECT 1 FROM segments WHERE id = :id FOR UPDATE"), {"id": segment_id}
        )
        started = time.monotonic()
        response = await live_client.patch(
            f"/api/v1/segments/{segment_id}", json={"name": "renamed"}, headers=admin.headers
        )
        elapsed = time.monotonic() - started
        await holder.rollback()
    assert_problem(response, 409, "busy")
    assert response.headers["retry-after"]
    assert elapsed < 5
    # The connection went back to the pool healthy: the same request now succeeds.
    again = await live_client.patch(
        f"/api/v1/segments/{segment_id}", json={"name": "renamed"}, headers=admin.headers
    )
    assert again.status_code == 200, again.text


async def test_unreachable_database_is_503_with_retry_after(app: FastAPI) -> None:

    from app.main import create_app

    dead = app.state.settings.model_copy(
        update={"database_url": "postgresql://postgres@127.0.0.1:1/none", "db_pool_timeout_s": 1}
    )
    broken = create_app(dead)
    async with started(broken) as served:
        transport = httpx.ASGITransport(app=served.asgi, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            token = served.services.tokens.issue(uuid.uuid4(), Role.admin)
            response = await client.get(
                "/api/v1/segments", headers={"Authorization": f"Bearer {token}"}
            )
            assert_problem(response, 503, "unavailable")
            assert response.headers["retry-after"]
            ready = await client.get("/readyz")
            assert_problem(ready, 503, "unavailable")


async def test_raw_connection_is_inside_the_request_transaction(app: FastAPI) -> None:
    from app.core.db import raw_connection

    async with app.state.db.sessionmaker() as session, session.begin():
        driver = await raw_connection(session)
        assert driver.is_in_transaction()
        await driver.execute("SELECT pg_advisory_xact_lock(42)")
        held = await driver.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
        )
        assert held == 1
        await session.rollback()


def _closed_while_ending_transaction() -> BaseException:
    """The error a request sees when its connection dies mid-statement (server restart) and
    ending the transaction then fails on the closed connection."""
    shutdown = asyncpg.AdminShutdownError("terminating connection due to administrator command")
    gone = asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation")
    gone.__cause__ = shutdown
    ending = asyncpg.InterfaceError(
        "cannot call Transaction.__aexit__(): the underlying connection is closed"
    )
    ending.__context__ = gone
    return ending


def test_a_connection_lost_under_the_driver_is_503_and_misuse_stays_a_bug() -> None:
    lost = problem_for_database_error(_closed_while_ending_transaction())
    assert lost is not None and lost.status == 503 and lost.headers["Retry-After"]
    closed = problem_for_database_error(asyncpg.InterfaceError("connection is closed"))
    assert closed is not None and closed.status == 503
    busy = asyncpg.InterfaceError("cannot perform operation: another operation is in progress")
    assert problem_for_database_error(busy) is None
