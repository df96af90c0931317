"""What a client sees while PostgreSQL fails over, on a real server: a write that reaches a
read-only server (a demoted primary, a standby) or finds no writable host is a 503 with
`Retry-After` and the pools reconnect by themselves; a connection lost during COMMIT is a
503 `outcome: unknown`, and the same `Idempotency-Key` then answers the stored result or
does the work once."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import asyncpg
import httpx
import pytest

from app.core.db import libpq_url
from app.core.migrations import upgrade_to_head
from app.core.security import Role
from app.core.settings import Settings
from app.main import create_app
from tests.helpers import assert_problem, run_sql, started

API = "/api/v1"


def _url(
    base: str, *, netloc: str | None = None, db: str | None = None, query: str | None = None
) -> str:
    parts = urlsplit(libpq_url(base))
    path = f"/{db}" if db else parts.path
    return urlunsplit(
        ("postgresql", netloc or parts.netloc, path, parts.query if query is None else query, "")
    )


def _tcp(url: str, port: int) -> str:
    """`url` reaching the server through a relay listening on 127.0.0.1:`port`."""
    userinfo = urlsplit(url).netloc.rpartition("@")[0]
    return _url(url, netloc=f"{userinfo}@127.0.0.1:{port}", query="")


@pytest.fixture(scope="module")
def ha_database(database_url: str) -> Iterator[str]:
    """A migrated database of its own: these tests make it read-only for a while."""
    name = f"cf_failover_{uuid.uuid4().hex[:8]}"
    run_sql(libpq_url(database_url), f'CREATE DATABASE "{name}"')
    url = _url(database_url, db=name)
    try:
        upgrade_to_head(url)
        yield url
    finally:
        run_sql(libpq_url(database_url), f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class Seeded:
    def __init__(self, url: str, book: uuid.UUID, user: uuid.UUID, admin: uuid.UUID) -> None:
        self.url, self.book, self.user, self.admin = url, book, user, admin

    async def held(self, user: uuid.UUID | None = None) -> int:
        conn = await asyncpg.connect(self.url)
        try:
            count: int = await conn.fetchval(
                "SELECT count(*) FROM codes WHERE book_id = $1 AND user_id = $2",
                self.book,
                user or self.user,
            )
            return count
        finally:
            await conn.close()


@pytest.fixture
async def seeded(ha_database: str) -> Seeded:
    conn = await asyncpg.connect(ha_database)
    try:
        tag = uuid.uuid4().hex[:8]
        user = await conn.fetchval(
            "INSERT INTO users (email) VALUES ($1) RETURNING id", f"ha-{tag}@example.com"
        )
        admin = await conn.fetchval(
            "INSERT INTO users (email, role) VALUES ($1, 'admin') RETURNING id",
            f"ha-admin-{tag}@example.com",
        )
        book = await conn.fetchval(
            "INSERT INTO books (name, max_codes_per_user) VALUES ('ha', NULL) RETURNING id"
        )
        await conn.execute(
            "INSERT INTO codes (book_id, code) SELECT $1, $2 || g FROM generate_series(1, 50) g",
            book,
            f"HA{tag.upper()}-",
        )
    finally:
        await conn.close()
    return Seeded(ha_database, book, user, admin)


@contextlib.asynccontextmanager
async def served(settings: Settings, url: str) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    application = create_app(settings.model_copy(update={"database_url": url}))
    async with started(application) as app:
        transport = httpx.ASGITransport(app=app.asgi, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            yield http, app.services.tokens


def _headers(tokens: Any, user: uuid.UUID, role: Role = Role.user, key: str | None = None) -> dict:
    headers = {"Authorization": f"Bearer {tokens.issue(user, role)}"}
    if key is not None:
        headers["Idempotency-Key"] = key
    return headers


def _unavailable(response: httpx.Response) -> dict[str, object]:
    body = assert_problem(response, 503, "unavailable")
    assert int(response.headers["retry-after"]) > 0
    return body


async def _read_only(url: str, on: bool) -> None:
    """The database read-only for new sessions (as a standby is), and its sessions cut (as a
    demotion's restart cuts them)."""
    name = urlsplit(url).path.lstrip("/")
    conn = await asyncpg.connect(_url(url, db="postgres"))
    try:
        setting = "SET default_transaction_read_only = on" if on else "RESET ALL"
        await conn.execute(f'ALTER DATABASE "{name}" {setting}')
        if on:
            await conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = $1 AND pid <> pg_backend_pid()",
                name,
            )
    finally:
        await conn.close()


async def test_writes_to_a_read_only_server_are_503_and_the_pools_reconnect(
    settings: Settings, seeded: Seeded
) -> None:
    async with served(settings, seeded.url) as (http, tokens):
        user, admin = _headers(tokens, seeded.user), _headers(tokens, seeded.admin, Role.admin)
        assign = f"{API}/books/{seeded.book}/assign"
        assert (await http.post(assign, json={}, headers=user)).status_code == 201
        warm = await http.post(f"{API}/books", json={"name": "b"}, headers=admin)
        assert warm.status_code == 201, warm.text
        await _read_only(seeded.url, True)
        try:
            # The first writes meet connections the "demotion" cut, then read-only ones;
            # either way a 503 with Retry-After, never a 500.
            for _ in range(3):
                _unavailable(await http.post(assign, json={}, headers=user))
                _unavailable(await http.post(f"{API}/books", json={"name": "b"}, headers=admin))
            ready = await http.get("/readyz")
            assert "read-only" in str(_unavailable(ready)["detail"])
            assert (await http.get("/healthz")).status_code == 200
        finally:
            await _read_only(seeded.url, False)
        # A writable primary again, and no read-only connection left in either pool: the
        # very first writes succeed, without restarting anything.
        assert (await http.post(assign, json={}, headers=user)).status_code == 201
        created = await http.post(f"{API}/books", json={"name": "b"}, headers=admin)
        assert created.status_code == 201, created.text
        assert (await http.get("/readyz")).status_code == 200
    assert await seeded.held() == 2


async def test_multi_host_url_skips_hosts_down_and_refuses_read_only_ones(
    settings: Settings, seeded: Seeded
) -> None:
    userinfo = urlsplit(seeded.url).netloc.rpartition("@")[0]
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        down = f"127.0.0.1:{sock.getsockname()[1]}"  # bound, never listening: refused
        async with Relay(seeded.url) as relay:
            hosts = f"{userinfo}@{down},127.0.0.1:{relay.listen_port}"
            url = _url(seeded.url, netloc=hosts, query="target_session_attrs=read-write")
            await _multi_host(settings, seeded, url)
    assert await seeded.held() == 2


async def _multi_host(settings: Settings, seeded: Seeded, url: str) -> None:
    async with served(settings, url) as (http, tokens):
        user, admin = _headers(tokens, seeded.user), _headers(tokens, seeded.admin, Role.admin)
        assign = f"{API}/books/{seeded.book}/assign"
        # Both pools (the SQL one and SQLAlchemy's) find the writable host after the dead one.
        assert (await http.post(assign, json={}, headers=user)).status_code == 201
        created = await http.post(f"{API}/books", json={"name": "m"}, headers=admin)
        assert created.status_code == 201, created.text
        assert (await http.get("/readyz")).status_code == 200
        await _read_only(seeded.url, True)
        try:
            # No host is read-write any more: target_session_attrs refuses every one.
            for _ in range(3):
                _unavailable(await http.post(assign, json={}, headers=user))
                _unavailable(await http.post(f"{API}/books", json={"name": "m"}, headers=admin))
            _unavailable(await http.get("/readyz"))
            assert (await http.get("/healthz")).status_code == 200
        finally:
            await _read_only(seeded.url, False)
        assert (await http.post(assign, json={}, headers=user)).status_code == 201
        assert (await http.get("/readyz")).status_code == 200


class Relay:
    """A TCP relay on 127.0.0.1 to the server of `url` (TCP or Unix socket) that, when armed,
    loses the connection of the next COMMIT: `after=True` passes the COMMIT on and drops
    the server's answer (it committed, the service cannot know); `after=False` drops the
    COMMIT itself (nothing committed)."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        socket_dir = dict(parse_qsl(parts.query)).get("host")
        self.host, self.port = parts.hostname, parts.port or 5432
        self.unix = f"{socket_dir}/.s.PGSQL.{self.port}" if self.host is None else None
        self.listen_port = 0
        self.armed: bool | None = None
        self.marker = b"COMMIT"  # what the message to cut contains
        self.cuts = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> Relay:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.listen_port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        if self.unix is not None:
            up_reader, up_writer = await asyncio.open_unix_connection(self.unix)
        else:
            up_reader, up_writer = await asyncio.open_connection(self.host, self.port)
        cut = asyncio.Event()
        drop_answer = asyncio.Event()

        async def to_server() -> None:
            parsed = False  # the marked statement was only prepared: cut at its execution
            while chunk := await reader.read(65536):
                if parsed or (self.armed is not None and self.marker in chunk):
                    if self.armed and chunk[:1] == b"P" and not parsed:
                        parsed = True  # Parse/Describe: let it through, wait for Bind/Execute
                    else:
                        parsed = False
                        after, self.armed = self.armed, None
                        self.cuts += 1
                        if not after:
                            cut.set()
                            return
                        drop_answer.set()
                up_writer.write(chunk)
                await up_writer.drain()

        async def to_client() -> None:
            while chunk := await up_reader.read(65536):
                if drop_answer.is_set():
                    cut.set()
                    return
                writer.write(chunk)
                await writer.drain()

        pumps = [asyncio.create_task(to_server()), asyncio.create_task(to_client())]
        waiter = asyncio.create_task(cut.wait())
        try:
            await asyncio.wait([*pumps, waiter], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (*pumps, waiter):
                t.cancel()
            await asyncio.gather(*pumps, waiter, return_exceptions=True)
            writer.transport.abort()
            up_writer.transport.abort()
            self._tasks.discard(task)


@pytest.mark.parametrize("after", [True, False], ids=["committed", "not-committed"])
async def test_connection_lost_during_commit_is_unknown_and_the_key_settles_it(
    settings: Settings, seeded: Seeded, after: bool
) -> None:
    async with (
        Relay(seeded.url) as proxy,
        served(settings, _tcp(seeded.url, proxy.listen_port)) as (http, tokens),
    ):
        key = uuid.uuid4().hex
        headers = _headers(tokens, seeded.user, key=key)
        assign = f"{API}/books/{seeded.book}/assign"
        proxy.armed = after
        first = await http.post(assign, json={}, headers=headers)
        assert proxy.cuts == 1
        body = _unavailable(first)
        assert body["outcome"] == "unknown", body
        assert await seeded.held() == (1 if after else 0)

        retried = await http.post(assign, json={}, headers=headers)
        assert retried.status_code == 201, retried.text
        assert retried.headers.get("idempotent-replayed") == ("true" if after else None)
        again = await http.post(assign, json={}, headers=headers)
        assert again.status_code == 201 and again.json() == retried.json()
        assert again.headers.get("idempotent-replayed") == "true"
        assert await seeded.held() == 1

        # The ORM path (an admin creating a book) answers the same way.
        name = f"unknown-{key}"
        admin = _headers(tokens, seeded.admin, Role.admin, key=key)
        proxy.armed = after
        created = await http.post(f"{API}/books", json={"name": name}, headers=admin)
        assert _unavailable(created)["outcome"] == "unknown"
        retried = await http.post(f"{API}/books", json={"name": name}, headers=admin)
        assert retried.status_code == 201, retried.text
        assert retried.headers.get("idempotent-replayed") == ("true" if after else None)
    conn = await asyncpg.connect(seeded.url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM books WHERE name = $1", name) == 1
    finally:
        await conn.close()


async def test_statement_timeout_never_cancels_a_commit(settings: Settings, seeded: Seeded) -> None:
    """A COMMIT that takes longer than the service's statement timeout (deferred triggers
    that sleep at commit, as a COMMIT waiting for a synchronous standby does) completes: no
    timeout of the service's, the server's statement timeout it sets or one of its own,
    cancels a COMMIT, which would leave it on the primary unreplicated."""
    conn = await asyncpg.connect(seeded.url)
    try:
        await conn.execute(
            "CREATE FUNCTION slow_commit() RETURNS trigger LANGUAGE plpgsql AS"
            " $$ BEGIN PERFORM pg_sleep(0.4); RETURN NULL; END $$;"
            " CREATE CONSTRAINT TRIGGER slow_commit AFTER UPDATE ON codes"
            " DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION slow_commit();"
            " CREATE CONSTRAINT TRIGGER slow_commit AFTER INSERT ON books"
            " DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION slow_commit();"
        )
        quick = settings.model_copy(update={"db_statement_timeout_ms": 150})
        async with served(quick, seeded.url) as (http, tokens):
            user = _headers(tokens, seeded.user)
            assigned = await http.post(f"{API}/books/{seeded.book}/assign", json={}, headers=user)
            assert assigned.status_code == 201, assigned.text
            admin = _headers(tokens, seeded.admin, Role.admin)
            created = await http.post(f"{API}/books", json={"name": "slow"}, headers=admin)
            assert created.status_code == 201, created.text
        assert await seeded.held() == 1
    finally:
        await conn.execute(
            "DROP TRIGGER slow_commit ON codes; DROP TRIGGER slow_commit ON books;"
            " DROP FUNCTION slow_commit()"
        )
        await conn.close()


@pytest.mark.parametrize("after", [True, False], ids=["committed", "not-committed"])
async def test_connection_lost_during_a_one_statement_write_is_unknown(
    settings: Settings, seeded: Seeded, after: bool
) -> None:
    """Without a key, an assign is one statement that commits as it ends: losing the
    connection while it runs leaves the outcome unknown, whichever way it went."""
    async with (
        Relay(seeded.url) as proxy,
        served(settings, _tcp(seeded.url, proxy.listen_port)) as (http, tokens),
    ):
        proxy.marker = b"book_assign_random"  # the statement, parsed on a fresh connection
        proxy.armed = after
        assigned = await http.post(
            f"{API}/books/{seeded.book}/assign", json={}, headers=_headers(tokens, seeded.user)
        )
        assert proxy.cuts == 1
        assert _unavailable(assigned)["outcome"] == "unknown"
    assert await seeded.held() == (1 if after else 0)
