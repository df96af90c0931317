"""Test harness: a real PostgreSQL (DATABASE_URL's server, else the embedded one), migrated
once per session into a throwaway database; per-test rollback for ordinary tests and a
committed client for concurrency tests."""

from __future__ import annotations

import asyncio
import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest
from fastapi import FastAPI, Request
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, async_sessionmaker

from app.api.deps import connection_source, get_session
from app.core.clientip import parse_networks
from app.core.db import apply_timeouts, libpq_url
from app.core.lockout import Lockouts
from app.core.migrations import upgrade_to_head
from app.core.security import Role
from app.core.settings import Settings
from app.core.transaction import Acquire
from app.main import create_app
from tests.helpers import ApiUser, run_sql, started

# The fault-injection suite restarts servers and kills processes: it is collected only by
# `make test-faults` (RUN_FAULTS=1), never by the everyday `make test`.
collect_ignore = [] if os.environ.get("RUN_FAULTS") == "1" else ["faults"]


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """A fresh database for this test session, dropped afterwards."""
    configured = os.environ.get("DATABASE_URL")
    if configured:
        name = f"cf_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
        admin_url = libpq_url(configured)

        async def admin(sql: str) -> None:
            conn = await asyncpg.connect(admin_url, statement_cache_size=0)
            try:
                await conn.execute(sql)
            finally:
                await conn.close()

        asyncio.run(admin(f'CREATE DATABASE "{name}"'))
        url = _with_database(admin_url, name)
        upgrade_to_head(url)
        yield url
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    else:
        from app.core.embedded import start_embedded

        tmp = Path(tempfile.mkdtemp(prefix="cf-test-"))
        tmp.chmod(0o755)
        server, base = start_embedded(tmp, cleanup="delete")
        upgrade_to_head(base)
        yield base
        server.cleanup()


@pytest.fixture
def blank_database(database_url: str) -> Iterator[str]:
    """An empty database of its own on the test server (a test migrates it), dropped
    afterwards."""
    server = libpq_url(database_url)
    name = f"cf_blank_{uuid.uuid4().hex[:8]}"
    run_sql(server, f'CREATE DATABASE "{name}"')
    try:
        yield _with_database(server, name)
    finally:
        run_sql(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _direct_url(database_url: str) -> str | None:
    """DATABASE_DIRECT_URL (e.g. past PgBouncer, for LISTEN) pointed at the test database."""
    direct = os.environ.get("DATABASE_DIRECT_URL")
    if not direct:
        return None
    return _with_database(libpq_url(direct), urlsplit(database_url).path.lstrip("/"))


@pytest.fixture(scope="session")
def settings(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(
        env="test",
        database_url=database_url,
        database_direct_url=_direct_url(database_url),
        jwt_secret="test-secret-" + "x" * 32,
        rate_limit_enabled=False,
        run_worker=False,
        data_dir=tmp_path_factory.mktemp("data"),
        db_pool_size=20,
        db_orm_pool_size=20,
        db_max_overflow=20,
        log_json=True,
        log_level="WARNING",
        _env_file=None,
    )


@pytest.fixture(scope="session")
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    application = create_app(settings)
    async with started(application) as served:
        # For the tests' convenience: the app itself hands these to requests in their state.
        application.state.asgi = served.asgi
        application.state.services = served.services
        application.state.db = served.services.db
        application.state.tokens = served.services.tokens
        application.state.settings = settings
        yield application


def _client(app: FastAPI) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app.state.asgi, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://test", timeout=60)


@pytest.fixture
async def pg(settings: Settings) -> AsyncIterator[asyncpg.Connection]:
    """An autocommit connection of its own: what it writes is visible to others at once, and
    it can watch other sessions (pg_stat_activity, pg_locks)."""
    conn = await asyncpg.connect(
        libpq_url(settings.database_url or ""), statement_cache_size=settings.statement_cache_size
    )
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
async def conn(app: FastAPI) -> AsyncIterator[AsyncConnection]:
    """A connection inside an outer transaction that is rolled back after the test."""
    async with app.state.db.engine.connect() as connection:
        outer = await connection.begin()
        yield connection
        if outer.is_active:
            await outer.rollback()


@pytest.fixture
async def client(app: FastAPI, conn: AsyncConnection) -> AsyncIterator[httpx.AsyncClient]:
    """API client whose every request runs in a savepoint of the test's rolled-back
    transaction: nothing a test writes outlives it."""
    maker = async_sessionmaker(
        bind=conn, join_transaction_mode="create_savepoint", expire_on_commit=False
    )

    async def session_in_test_transaction(request: Request) -> AsyncIterator[AsyncSession]:
        async with maker() as session, session.begin():
            await apply_timeouts(session, request.app.state.db)
            yield session

    # SQL routes take a savepoint on the same connection: begin the outer transaction on the
    # driver first, so theirs nests inside it instead of committing on its own.
    await conn.execute(text("SELECT 1"))
    driver = (await conn.get_raw_connection()).driver_connection

    @asynccontextmanager
    async def lend() -> AsyncIterator[Any]:
        yield driver

    async def test_connection(request: Request) -> Acquire:
        return lend

    app.dependency_overrides[get_session] = session_in_test_transaction
    app.dependency_overrides[connection_source] = test_connection
    try:
        async with _client(app) as c:
            yield c
    finally:
        app.dependency_overrides.pop(get_session, None)
        app.dependency_overrides.pop(connection_source, None)


@pytest.fixture
async def live_client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """API client over the real pool: requests commit, so many can run at once."""
    async with _client(app) as c:
        yield c


MakeUser = Callable[..., Awaitable[ApiUser]]

_INSERT_USER = text(
    "INSERT INTO users (email, password_hash, role) VALUES (:email, NULL, :role) RETURNING id"
)


def _issue(app: FastAPI, user_id: uuid.UUID, email: str, role: Role) -> ApiUser:
    return ApiUser(user_id, email, role, app.state.tokens.issue(user_id, role))


@pytest.fixture
def make_user(app: FastAPI, conn: AsyncConnection) -> MakeUser:
    """Create a user in the test's transaction and return it with a token (no hashing)."""

    async def factory(role: Role = Role.user, email: str | None = None) -> ApiUser:
        email = email or f"u-{uuid.uuid4().hex[:12]}@example.com"
        user_id = (
            await conn.execute(_INSERT_USER, {"email": email, "role": role.value})
        ).scalar_one()
        return _issue(app, user_id, email, role)

    return factory


@pytest.fixture
def make_live_user(app: FastAPI) -> MakeUser:
    """Create a committed user (for tests with many real connections)."""

    async def factory(role: Role = Role.user, email: str | None = None) -> ApiUser:
        email = email or f"u-{uuid.uuid4().hex[:12]}@example.com"
        async with app.state.db.engine.begin() as connection:
            user_id = (
                await connection.execute(_INSERT_USER, {"email": email, "role": role.value})
            ).scalar_one()
        return _issue(app, user_id, email, role)

    return factory


@pytest.fixture
async def admin(make_user: MakeUser) -> ApiUser:
    return await make_user(Role.admin)


@pytest.fixture
async def user(make_user: MakeUser) -> ApiUser:
    return await make_user(Role.user)


@pytest.fixture
def lockouts(app: FastAPI) -> Iterator[Lockouts]:
    """The app's lockouts, on (the suite runs with limits off), 10 failures per 10 minutes,
    the test client's peer as the trusted proxy; back off afterwards."""
    guard: Lockouts = app.state.services.lockouts
    saved = (guard.enabled, guard.max_failures, guard.window_seconds, guard.trusted_proxies)
    guard.enabled, guard.max_failures, guard.window_seconds = True, 10, 600
    guard.trusted_proxies = parse_networks(["127.0.0.1/32"])
    guard.forget()
    try:
        yield guard
    finally:
        guard.enabled, guard.max_failures, guard.window_seconds, guard.trusted_proxies = saved
        guard.forget()


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
