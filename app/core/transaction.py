"""The request's transaction (`Tx` in app/api/deps.py) on a bare pooled asyncpg
connection, for the routes written in SQL (the hot paths). No ORM session wraps it:
`async with tx as conn:` begins, takes the request's `Idempotency-Key` if it sent one (a
repeat answers the stored response), and commits when the block ends — before the response
is sent — or rolls back on any error. `await tx.remember(...)` stores the response in that
same transaction, so it exists exactly when the effect does.

`async with tx.one_statement() as conn:` is for a block that runs exactly one statement
(a plpgsql call that does the whole request): without an `Idempotency-Key`, that statement
runs in its own implicit transaction, which saves the BEGIN and COMMIT round trips; with a
key (its record and the effect must commit together) or with per-transaction timeouts
(behind PgBouncer) the block is a transaction as usual.

Failover: a connection lost while COMMIT is in flight (or, in a one-statement block, while
its statement runs: it commits as it ends) is answered `OutcomeUnknown` (503, `outcome:
unknown`), never success nor a definite failure. Nothing here puts a timeout on COMMIT
(PostgreSQL's statement timeout ends before the commit work, so it cannot cancel a COMMIT
waiting for the synchronous standby either): a cancelled wait would leave the commit on the
primary without replicating it. A connection that turns out read-only (a demoted primary, a
standby behind a stale address) is closed, and the rest of the pool with it, so the pool
reconnects to the new primary.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Any, TypeVar

import asyncpg

from app.core.db import Database
from app.core.idempotency import IdempotencyKey
from app.core.problems import (
    SQLSTATE_DEADLOCK,
    SQLSTATE_SERIALIZATION,
    OutcomeUnknown,
    Unavailable,
    sqlstate_of,
    wrong_server,
)

Result = TypeVar("Result")
Acquired = AbstractAsyncContextManager[asyncpg.Connection]
Acquire = Callable[[], Acquired]

_TIMEOUTS = "SELECT set_config('lock_timeout', $1, true), set_config('statement_timeout', $2, true)"
# SQLSTATE classes a failed COMMIT answers with when the server rolled back for certain:
# serialization or deadlock (40), a deferred constraint (23).
_ROLLED_BACK = ("40", "23")
# Rolled back for a reason a second run of the same work may not meet.
_TRANSIENT = (SQLSTATE_DEADLOCK, SQLSTATE_SERIALIZATION)
# Failing to get or start a connection: the server is away or every connection is busy.
_UNREACHABLE = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.TargetServerAttributeNotMatched,
)


def _connection_lost(exc: BaseException) -> bool:
    """The connection went away under a statement (server shutdown or crash, network,
    a driver left mid-operation), rather than the server refusing the statement."""
    if isinstance(exc, OSError | asyncpg.PostgresConnectionError):
        return True
    if (sqlstate_of(exc) or "").startswith(("08", "57P")):
        return True
    return isinstance(exc, asyncpg.InterfaceError | asyncpg.InternalClientError) and any(
        sign in str(exc) for sign in ("closed", "released back to the pool", "another operation")
    )


def _close(conn: asyncpg.Connection) -> None:
    """Close a connection for good, so the pool replaces it; one the pool already let go
    when the server dropped it refuses every call, and needs nothing more."""
    with contextlib.suppress(asyncpg.InterfaceError):
        conn.terminate()


class Transaction:
    """One transaction on one pooled connection; see the module docstring."""

    __slots__ = (
        "_acquire",
        "_acquired",
        "_conn",
        "_db",
        "_one_statement",
        "_request_hash",
        "_xact",
        "idempotency",
    )

    def __init__(
        self, acquire: Acquire, db: Database, idempotency: IdempotencyKey, request_hash: str
    ) -> None:
        self._acquire = acquire
        self._db = db
        self.idempotency = idempotency
        self._request_hash = request_hash
        self._acquired: AbstractAsyncContextManager[asyncpg.Connection] | None = None
        self._conn: asyncpg.Connection | None = None
        self._xact: Any = None
        self._one_statement = False

    def one_statement(self) -> Transaction:
        """This transaction, for a block that runs one statement (see the module docstring)."""
        self._one_statement = True
        return self

    async def __aenter__(self) -> asyncpg.Connection:
        acquired = self._acquire()
        try:
            # A deadline on the wait, not asyncpg's own acquire timeout: that one runs the
            # acquire in a task of its own, on every request whose pool has no idle
            # connection at that moment.
            async with asyncio.timeout(self._db.acquire_timeout_s):
                conn = await acquired.__aenter__()
        except _UNREACHABLE as exc:
            raise Unavailable("No database connection is available; retry shortly.") from exc
        self._acquired, self._conn = acquired, conn
        db = self._db
        if self._one_statement and self.idempotency.key is None and not db.timeouts_per_transaction:
            return conn
        xact = conn.transaction()
        try:
            await xact.__aenter__()
        except BaseException as exc:
            # Anything but a server error or a cancel means the connection is broken (one the
            # server dropped while it sat in the pool, say): close it, so the pool replaces it.
            broken = not isinstance(exc, asyncpg.PostgresError | asyncio.CancelledError)
            if broken:
                _close(conn)
            self._acquired = self._conn = None
            await acquired.__aexit__(type(exc), exc, exc.__traceback__)
            if broken:
                raise Unavailable("The database connection was lost; retry shortly.") from exc
            raise
        self._xact = xact
        try:
            if db.timeouts_per_transaction:
                await conn.execute(
                    _TIMEOUTS, f"{db.lock_timeout_ms}ms", f"{db.statement_timeout_ms}ms"
                )
            if self.idempotency.key is not None:
                await self.idempotency.begin(conn, self._request_hash)
        except BaseException as exc:
            await self.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        return conn

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        acquired, conn, xact = self._acquired, self._conn, self._xact
        self._acquired = self._conn = self._xact = None
        assert acquired is not None and conn is not None
        try:
            if exc is not None and wrong_server(exc):
                # This server cannot take writes (any more): neither can the pool's other
                # connections to it. Close them all; the next ones go to the new primary.
                _close(conn)
                if self._db.pool is not None:
                    await self._db.pool.expire_connections()
            elif xact is None:
                if exc is not None and _connection_lost(exc):
                    # A one-statement block commits as its statement ends: lost mid-way, it
                    # may have committed or not.
                    _close(conn)
                    raise OutcomeUnknown() from exc
            elif exc is None:
                await self._commit(conn, xact)
            else:
                try:
                    await xact.__aexit__(exc_type, exc, tb)  # rolls back
                except asyncio.CancelledError:
                    _close(conn)
                    raise
                except Exception:
                    _close(conn)  # lost meanwhile: the request's own error is the answer
        finally:
            await acquired.__aexit__(exc_type, exc, tb)

    async def _commit(self, conn: asyncpg.Connection, xact: Any) -> None:
        try:
            await xact.__aexit__(None, None, None)
        except asyncpg.PostgresError as exc:
            if (sqlstate_of(exc) or "").startswith(_ROLLED_BACK):
                raise  # the server rolled back: a definite failure, mapped as any other
            _close(conn)
            raise OutcomeUnknown() from exc
        except asyncio.CancelledError:
            _close(conn)
            raise
        except Exception as exc:
            # The connection died with the COMMIT in flight: it may have committed or not.
            _close(conn)
            raise OutcomeUnknown() from exc

    async def remember(
        self, conn: asyncpg.Connection, status_code: int, payload: Any, location: str | None = None
    ) -> None:
        """Store the response for the request's `Idempotency-Key`, if it sent one."""
        if self.idempotency.key is not None:
            await self.idempotency.remember(conn, status_code, payload, location)


async def retry_transient(
    tx: Transaction, work: Callable[[asyncpg.Connection], Awaitable[Result]]
) -> Result:
    """`work` in the transaction, run again once (a new transaction) if the server rolled it
    back for a deadlock or a serialization failure; a second such failure is raised."""
    for attempt in (1, 2):
        try:
            async with tx as conn:
                return await work(conn)
        except asyncpg.PostgresError as exc:
            if attempt == 2 or sqlstate_of(exc) not in _TRANSIENT:
                raise
    raise AssertionError("unreachable")
