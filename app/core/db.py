"""Engines and pools: SQLAlchemy's for ORM sessions, a bare asyncpg pool for the hot paths."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg
import orjson
from sqlalchemy import event, text
from sqlalchemy.engine import ExceptionContext
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import NullPool

from app.core.problems import OutcomeUnknown, Unavailable, sqlstate_of, wrong_server
from app.core.settings import Settings


def sqlalchemy_url(url: str) -> str:
    """`postgresql://…` (libpq style, also what the embedded server reports) → asyncpg dialect.

    A libpq multi-host URL (`postgresql://u@h1:5432,h2:5432/db?target_session_attrs=read-write`)
    becomes SQLAlchemy's form of it, one `host=h:p` query argument per host; asyncpg then
    tries them in turn, as it does with the libpq form for the raw pool."""
    parts = urlsplit(url)
    scheme = "postgresql+asyncpg"
    query = parse_qsl(parts.query)
    netloc = parts.netloc
    userinfo, at, hostlist = netloc.rpartition("@")
    if "," in hostlist:
        netloc = userinfo + at
        query = [("host", host) for host in hostlist.split(",")] + query
    return urlunsplit((scheme, netloc, parts.path, urlencode(query), parts.fragment))


def libpq_url(url: str) -> str:
    """The same URL in the form asyncpg.connect() and psql accept."""
    parts = urlsplit(url)
    return urlunsplit(("postgresql", parts.netloc, parts.path, parts.query, parts.fragment))


def _server_settings(settings: Settings) -> dict[str, str]:
    server_settings = {"application_name": "couponflash"}
    if not settings.db_pgbouncer:
        # Timeouts as startup parameters cost no round trip per request; behind PgBouncer
        # (which refuses unknown startup parameters) each transaction sets them instead.
        server_settings["lock_timeout"] = f"{settings.db_lock_timeout_ms}ms"
        server_settings["statement_timeout"] = f"{settings.db_statement_timeout_ms}ms"
    return server_settings


async def keep_session(conn: asyncpg.Connection) -> None:
    """Pool release without asyncpg's session reset (`RESET ALL`, `UNLISTEN *`, unlock all:
    one more round trip per request). Requests leave no session state behind: their locks
    are `pg_advisory_xact_lock`, their settings `SET LOCAL`, and an open transaction is
    still rolled back by the pool before this runs."""


async def _json_codecs(conn: asyncpg.Connection) -> None:
    """JSON as SQLAlchemy's asyncpg dialect sets it up: parameters are JSON text, results
    are decoded, so SQL shared by both pools behaves the same on either."""
    for name in ("json", "jsonb"):
        await conn.set_type_codec(
            name, encoder=str, decoder=orjson.loads, schema="pg_catalog", format="text"
        )


def create_engine(
    settings: Settings, url: str | None = None, *, pooled: bool = True
) -> AsyncEngine:
    """The service's engine; `pooled=False` for one-off tools (migrations, checks)."""
    target = url or settings.database_url
    if not target:
        raise RuntimeError("DATABASE_URL is not set and no embedded server was started")
    connect_args: dict[str, Any] = {
        "statement_cache_size": settings.statement_cache_size,
        "server_settings": _server_settings(settings),
    }
    final_url = sqlalchemy_url(target)
    if settings.statement_cache_size == 0:
        # Behind PgBouncer in transaction mode: no statement outlives its transaction, and
        # the few SQLAlchemy must prepare get unique names so they never collide.
        connect_args["prepared_statement_name_func"] = lambda: f"__cf_{uuid.uuid4().hex}__"
        final_url += ("&" if "?" in final_url else "?") + "prepared_statement_cache_size=0"
    if not pooled:
        engine = create_async_engine(final_url, poolclass=NullPool, connect_args=connect_args)
    else:
        engine = create_async_engine(
            final_url,
            pool_size=settings.db_orm_pool_size,
            max_overflow=settings.db_max_overflow,
            pool_timeout=settings.db_pool_timeout_s,
            pool_pre_ping=False,
            connect_args=connect_args,
        )
    event.listen(engine.sync_engine, "handle_error", _read_only_is_disconnect)
    return engine


def _read_only_is_disconnect(context: ExceptionContext) -> None:
    """A read-only server (a demoted primary, a standby) is as useless for writes as a lost
    one: SQLAlchemy then drops the connection and the pool's others, and reconnects."""
    if wrong_server(context.original_exception):
        context.is_disconnect = True


@dataclass
class Database:
    """Two pools on one server: SQLAlchemy's for ORM sessions, and a bare asyncpg pool for
    the routes written in SQL (the hot paths), which need no ORM around the connection."""

    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    lock_timeout_ms: int
    statement_timeout_ms: int
    timeouts_per_transaction: bool
    pool_options: dict[str, Any] = field(default_factory=dict)
    acquire_timeout_s: float = 5.0
    pool: asyncpg.Pool | None = None
    _opening: asyncio.Lock = field(default_factory=asyncio.Lock)

    @classmethod
    def from_settings(cls, settings: Settings, url: str | None = None) -> Database:
        engine = create_engine(settings, url)
        target = url or settings.database_url
        assert target is not None
        return cls(
            engine=engine,
            sessionmaker=async_sessionmaker(engine, expire_on_commit=False, autoflush=False),
            lock_timeout_ms=settings.db_lock_timeout_ms,
            statement_timeout_ms=settings.db_statement_timeout_ms,
            timeouts_per_transaction=settings.db_pgbouncer,
            pool_options={
                "dsn": libpq_url(target),
                "min_size": 0,
                "max_size": settings.db_pool_size,
                # Idle connections close after a minute, so a process that was busy once
                # does not keep server slots that others need.
                "max_inactive_connection_lifetime": 60.0,
                "statement_cache_size": settings.statement_cache_size,
                "server_settings": _server_settings(settings),
            },
            acquire_timeout_s=settings.db_pool_timeout_s,
        )

    async def sql_pool(self) -> asyncpg.Pool:
        """The asyncpg pool, created on first use (connections open on demand)."""
        if self.pool is not None:
            return self.pool
        async with self._opening:
            if self.pool is None:
                self.pool = await asyncpg.create_pool(
                    **self.pool_options, init=_json_codecs, reset=keep_session
                )
        return self.pool

    async def dispose(self) -> None:
        if self.pool is not None:
            await self.pool.close()
            self.pool = None
        await self.engine.dispose()


_TIMEOUTS = text(
    "SELECT set_config('lock_timeout', :lock, true), set_config('statement_timeout', :stmt, true)"
)


async def apply_timeouts(session: AsyncSession, db: Database) -> None:
    """`SET LOCAL` both timeouts: they end with the transaction, so nothing leaks through a
    transaction-mode PgBouncer. Without PgBouncer they are startup parameters instead."""
    await session.execute(
        _TIMEOUTS, {"lock": f"{db.lock_timeout_ms}ms", "stmt": f"{db.statement_timeout_ms}ms"}
    )


async def raw_connection(session: AsyncSession) -> asyncpg.Connection:
    """The asyncpg connection under the session, inside the session's transaction, for
    hand-written hot-path SQL.

    SQLAlchemy begins the driver's transaction lazily, on its own first statement; SQL sent
    straight to the driver before that would autocommit statement by statement (and release
    every `pg_advisory_xact_lock` at once). So the transaction is begun here, with the same
    BEGIN SQLAlchemy would have sent.
    """
    conn = await session.connection()
    raw = await conn.get_raw_connection()
    driver: asyncpg.Connection = raw.driver_connection  # type: ignore[assignment]
    if not driver.is_in_transaction():
        adapted: Any = raw.dbapi_connection
        start = getattr(adapted, "_start_transaction", None)
        if start is None or getattr(adapted, "_transaction", True) is not None:
            # A SQLAlchemy without that hook: let it begin on a trivial statement.
            await session.execute(text("SELECT 1"))
            return driver
        try:
            await start()
        except Exception as exc:
            # Errors raised here bypass SQLAlchemy's own handling: mark the connection
            # dead so the pool replaces it, and answer 503 (e.g. the server restarted).
            await conn.invalidate(exc)
            raise Unavailable("The database connection was lost; retry shortly.") from exc
    return driver


async def commit(session: AsyncSession) -> None:
    """Commit the request's ORM transaction; a connection lost during COMMIT is
    `OutcomeUnknown` (it may or may not have committed)."""
    try:
        await session.commit()
    except DBAPIError as exc:
        if (sqlstate_of(exc) or "").startswith(("40", "23")):
            raise  # the server rolled back: a definite failure
        raise OutcomeUnknown() from exc
    except (OSError, asyncpg.InterfaceError) as exc:
        raise OutcomeUnknown() from exc
