"""`retry_transient` (a coalesced batch's transaction): a transaction that PostgreSQL rolls
back for a deadlock runs once more in a new transaction; a second deadlock is the answer.
The deadlocks are real ones, between the transaction's connection and another session."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest
from fastapi import FastAPI

from app.core.idempotency import IdempotencyKey
from app.core.security import Principal, Role
from app.core.transaction import Transaction, retry_transient
from tests.helpers import wait_for_lock_waiters

LOCK_A, LOCK_B = 987_001, 987_002


async def _deadlocked(
    conn: asyncpg.Connection, other: asyncpg.Connection, watch: asyncpg.Connection
) -> None:
    """`conn` holds A and waits for B, which `other` holds; then `other` asks for A. `conn`
    waited first, so its deadlock check fires first and PostgreSQL rolls it back (40P01);
    `other` then gets A and commits."""
    other_pid = await other.fetchval("SELECT pg_backend_pid()")
    await other.execute("BEGIN")
    await other.execute("SELECT pg_advisory_xact_lock($1)", LOCK_B)
    await conn.execute("SELECT pg_advisory_xact_lock($1)", LOCK_A)

    async def other_asks_for_a() -> None:
        await wait_for_lock_waiters(watch, blocked_by=[other_pid])  # `conn` waits for B
        await other.execute("SELECT pg_advisory_xact_lock($1)", LOCK_A)
        await other.execute("COMMIT")

    asker = asyncio.ensure_future(other_asks_for_a())
    try:
        await conn.execute("SELECT pg_advisory_xact_lock($1)", LOCK_B)
    finally:
        await asker


@pytest.mark.parametrize("deadlocks", [1, 2])
async def test_a_deadlock_runs_the_transaction_once_more(app: FastAPI, deadlocks: int) -> None:
    db = app.state.db
    pool = await db.sql_pool()
    caller = Principal(id=uuid.uuid4(), role=Role.user)
    tx = Transaction(pool.acquire, db, IdempotencyKey(caller, "/t", None, 24), "")
    runs: list[int] = []
    async with pool.acquire() as other, pool.acquire() as watch:

        async def work(conn: asyncpg.Connection) -> str:
            runs.append(await conn.fetchval("SELECT txid_current()"))
            if len(runs) <= deadlocks:
                await _deadlocked(conn, other, watch)
            return "done"

        if deadlocks == 1:
            assert await retry_transient(tx, work) == "done"
        else:
            with pytest.raises(asyncpg.DeadlockDetectedError):
                await retry_transient(tx, work)
    assert len(runs) == 2 and runs[0] != runs[1]  # two transactions, never a third
