"""`make bench`: assign-random, lock+redeem and reserve+purchase through the service and
through the bare reference app (same SQL), side by side in one run, with wrk.

Seeds a book of 1,000,000 codes, 100,000 users, a multi-use book with one code per client,
and a promo with 1,000,000 units; starts both apps with the same worker count and pool
size on 127.0.0.1; drives each scenario for a fixed time at 32 and 128 connections; checks
the invariants; writes the "Hot paths" section of docs/benchmarks.md. Stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import asyncpg

from app.check import run_checks, violations
from app.core.migrations import upgrade_to_head
from app.core.security import Role, TokenService
from bench.common import (
    ROOT,
    SECRET,
    free_port,
    machine,
    process,
    service,
    throwaway_database,
    write_section,
)

LUA = ROOT / "bench" / "lua"
CODES = 1_000_000
USERS = 100_000
UNITS = 1_000_000
SLOTS = 256
SCENARIOS = {
    "assign-random": ("assign.lua", {201}),
    "lock+redeem": ("lock_redeem.lua", {200}),
    "reserve+purchase": ("reserve_purchase.lua", {200, 201}),
}


@dataclass
class Run:
    rps: float
    p50_ms: float
    p99_ms: float
    statuses: dict[int, int] = field(default_factory=dict)
    socket_errors: int = 0

    def errors(self, expected: set[int]) -> int:
        return self.socket_errors + sum(n for s, n in self.statuses.items() if s not in expected)

    @classmethod
    def combined(cls, runs: list[Run]) -> Run:
        """Rounds of equal length as one: median req/s and p50, the worst p99."""
        statuses: dict[int, int] = {}
        for run in runs:
            for code, n in run.statuses.items():
                statuses[code] = statuses.get(code, 0) + n
        return cls(
            rps=statistics.median(r.rps for r in runs),
            p50_ms=statistics.median(r.p50_ms for r in runs),
            p99_ms=max(r.p99_ms for r in runs),
            statuses=statuses,
            socket_errors=sum(r.socket_errors for r in runs),
        )


@dataclass
class Seeded:
    books: list[uuid.UUID]  # one per app: per-user counts grow with each app's own run
    promos: list[uuid.UUID]
    users_file: Path


async def seed(url: str, workdir: Path, rounds: int) -> Seeded:
    """`rounds`: how many lock+redeem runs there will be; each gets codes of its own."""
    conn = await asyncpg.connect(url)
    try:
        started = time.monotonic()
        await conn.execute(
            "INSERT INTO users (email, lat, lng) SELECT 'bench-' || g || '@example.com',"
            " 40.4168, -3.7038 FROM generate_series(1, $1) g",
            USERS,
        )
        books = []
        for app in ("reference", "service"):
            book = await conn.fetchval(
                "INSERT INTO books (name, max_codes_per_user) VALUES ($1, NULL) RETURNING id",
                f"bench assign ({app})",
            )
            await conn.execute(
                "INSERT INTO codes (book_id, code)"
                " SELECT $1, $2 || g FROM generate_series(1, $3) g",
                book,
                f"BA-{app[0].upper()}-",
                CODES,
            )
            books.append(book)
        multi = await conn.fetchval(
            "INSERT INTO books (name, max_codes_per_user, max_redemptions_per_code)"
            " VALUES ('bench lock+redeem', NULL, 1000000000) RETURNING id"
        )
        slots = await conn.fetch("SELECT id FROM users ORDER BY id LIMIT $1", SLOTS)
        await conn.execute(
            """
            WITH c AS (
                INSERT INTO codes (book_id, code, status, user_id, assigned_at)
                SELECT $1, 'LR-' || r || '-' || s.n, 'assigned', s.id, now()
                FROM unnest($2::uuid[]) WITH ORDINALITY AS s(id, n),
                     generate_series(1, $3) AS r
                ORDER BY r, s.n  -- each run's codes on pages of their own
                RETURNING id, book_id, user_id
            )
            INSERT INTO redemption_history (code_id, book_id, user_id, action, actor_id)
            SELECT id, book_id, user_id, 'assigned', user_id FROM c
            """,
            multi,
            [r["id"] for r in slots],
            rounds,
        )
        store = await conn.fetchval(
            "INSERT INTO stores (name, lat, lng) VALUES ('bench', 40.4168, -3.7038) RETURNING id"
        )
        product = await conn.fetchval(
            "INSERT INTO products (store_id, name, price_cents) VALUES ($1, 'bench', 1000)"
            " RETURNING id",
            store,
        )
        promos = [
            await conn.fetchval(
                "INSERT INTO promos (product_id, title, promo_price_cents, quantity, max_per_user,"
                " starts_at, ends_at) VALUES ($1, $3, 500, $2, $2, now() - interval '1 minute',"
                " now() + interval '1 day') RETURNING id",
                product,
                UNITS,
                f"bench ({app})",
            )
            for app in ("reference", "service")
        ]
        await conn.execute("VACUUM ANALYZE")
        print(f"seeded in {time.monotonic() - started:.1f} s", flush=True)
    finally:
        await conn.close()
    tokens = TokenService(secret=SECRET, ttl_seconds=86_400)
    users_file = workdir / "users.txt"
    users_file.write_text("".join(f"{tokens.issue(r['id'], Role.user)} {r['id']}\n" for r in slots))
    return Seeded(books=books, promos=promos, users_file=users_file)


_ROUND = iter(range(1, 10_000))


async def vacuum(url: str) -> None:
    """Before every run: neither app inherits the dead rows of the run before it, nor a
    checkpoint falling due in the middle of its run."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(
            "VACUUM (ANALYZE) codes, redemption_history, promos, promo_units, promo_sales,"
            " reservations"
        )
        await conn.execute("CHECKPOINT")
    finally:
        await conn.close()


def wrk(port: int, script: str, connections: int, seconds: int, env: dict[str, str]) -> Run:
    env = {**env, "BENCH_ROUND": str(next(_ROUND) if "lock" in script else 1)}
    out = subprocess.run(
        [
            "wrk",
            f"-t{connections}",
            f"-c{connections}",
            f"-d{seconds}s",
            "--timeout",
            "5s",
            "-s",
            str(LUA / script),
            f"http://127.0.0.1:{port}",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=seconds + 60,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    lat = re.search(r"LATENCY p50=([\d.]+) p99=([\d.]+)", out)
    statuses_line = re.search(r"STATUSES (\S*)", out)
    statuses = {}
    if statuses_line and statuses_line.group(1):
        for part in statuses_line.group(1).split(","):
            code, count = part.split("=")
            statuses[int(code)] = int(count)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return Run(
        rps=rps,
        p50_ms=float(lat.group(1)) if lat else 0.0,
        p99_ms=float(lat.group(2)) if lat else 0.0,
        statuses=statuses,
        socket_errors=sum(int(g) for g in sock.groups()) if sock else 0,
    )


async def check(url: str) -> tuple[int, list[str]]:
    conn = await asyncpg.connect(url)
    try:
        outcomes = await run_checks(conn)
        sold = await conn.fetchval("SELECT count(*) FROM promo_units WHERE state = 'sold'")
        assigned = await conn.fetchval("SELECT count(*) FROM codes WHERE status <> 'unassigned'")
        print(f"after the run: {assigned:,} codes held, {sold:,} units sold", flush=True)
    finally:
        await conn.close()
    return len(outcomes), [f"{o.check.name}: {o.rows[:3]}" for o in violations(outcomes)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--pool", type=int, default=16)
    parser.add_argument("--connections", default="32,128")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="alternating runs per app at the first connection level (one at the others)",
    )
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    chosen = {name: SCENARIOS[name] for name in args.scenarios.split(",")}
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed: apt-get install -y wrk")
    levels = [int(c) for c in args.connections.split(",")]
    workdir = Path(tempfile.mkdtemp(prefix="cf-bench-hot-"))
    with throwaway_database("hot") as url:
        upgrade_to_head(url)
        runs_per_app = 1 + args.rounds + len(levels) - 1  # a warm-up, then the measurements
        seeded = asyncio.run(seed(url, workdir, 2 * runs_per_app))
        svc_port, ref_port = free_port(), free_port()
        ref_env = {"REF_DATABASE_URL": url, "REF_POOL_SIZE": str(args.pool)}
        ref_args = [
            sys.executable,
            "-m",
            "uvicorn",
            "bench.reference_app:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(ref_port),
            "--workers",
            str(args.workers),
            "--loop",
            "uvloop",
            "--http",
            "httptools",
            "--no-access-log",
            "--log-level",
            "warning",
        ]
        svc_env = {"DB_POOL_SIZE": str(args.pool), "DB_MAX_OVERFLOW": "0"}
        results: dict[tuple[str, int, str], Run] = {}
        with service(url, svc_port, args.workers, svc_env), process(ref_args, ref_port, ref_env):
            common = {
                "BENCH_LUA": str(LUA),
                "BENCH_USERS": str(seeded.users_file),
                "BENCH_BASE": "/api/v1",
            }
            targets = [
                (
                    target,
                    port,
                    {**common, "BENCH_BOOK": str(book), "BENCH_PROMO": str(promo)},
                )
                for target, port, book, promo in zip(
                    ("reference", "service"),
                    (ref_port, svc_port),
                    seeded.books,
                    seeded.promos,
                    strict=True,
                )
            ]
            for name, (script, expected) in chosen.items():
                for _, port, lua_env in targets:
                    wrk(port, script, 32, args.warmup, lua_env)
                for level, connections in enumerate(levels):
                    runs: dict[str, list[Run]] = {"reference": [], "service": []}
                    for round_ in range(args.rounds if level == 0 else 1):
                        # Who goes first alternates, so neither app always follows the other.
                        for target, port, lua_env in targets[:: -1 if round_ % 2 else 1]:
                            asyncio.run(vacuum(url))
                            run = wrk(port, script, connections, args.seconds, lua_env)
                            runs[target].append(run)
                            print(
                                f"{name:17} c={connections:<4} {target:9} {run.rps:8.0f} req/s"
                                f"  p50 {run.p50_ms:6.1f} ms  p99 {run.p99_ms:6.1f} ms"
                                f"  errors {run.errors(expected)}  {run.statuses}",
                                flush=True,
                            )
                    for target, target_runs in runs.items():
                        results[(name, connections, target)] = Run.combined(target_runs)
        total, bad = asyncio.run(check(url))
    shutil.rmtree(workdir, ignore_errors=True)
    print(f"invariants: {total - len(bad)} passed, {len(bad)} failed")
    for line in bad:
        print("  VIOLATION", line)
    if not args.no_write and chosen == SCENARIOS:
        write(results, levels, args, total, bad)
    if bad:
        sys.exit(1)


def write(
    results: dict[tuple[str, int, str], Run],
    levels: list[int],
    args: argparse.Namespace,
    total: int,
    bad: list[str],
) -> None:
    rows = [
        "| scenario | conns | reference req/s | service req/s | ratio | reference p50 / p99"
        " | service p50 / p99 | service errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, (_, expected) in SCENARIOS.items():
        for c in levels:
            ref, svc = results[(name, c, "reference")], results[(name, c, "service")]
            ratio = svc.rps / ref.rps if ref.rps else 0.0
            rows.append(
                f"| {name} | {c} | {ref.rps:,.0f} | {svc.rps:,.0f} | **{ratio:.2f}x** |"
                f" {ref.p50_ms:.1f} / {ref.p99_ms:.1f} ms | {svc.p50_ms:.1f} / {svc.p99_ms:.1f} ms"
                f" | {svc.errors(expected)} |"
            )
    body = f"""
`make bench` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC — {machine()}. Service and reference
each run {args.workers} uvicorn workers with {args.pool} pooled connections per worker, on
the same PostgreSQL, with wrk on the same box (one connection per wrk thread); {args.seconds} s
per measurement after a {args.warmup} s warm-up, a `VACUUM` and a `CHECKPOINT`, reference
and service alternating. At {levels[0]} connections each app runs {args.rounds} rounds, who goes
first alternating: req/s and p50 are their medians, p99 the worst of them. Data:
a book of {CODES:,} codes per app for assign (each app counts only its own
assignments per user), {USERS:,} users, {SLOTS} clients each with a multi-use code
(lock → redeem with the `lock_id`, repeated), a promo of {UNITS:,} units per app (reserve →
purchase, repeated). The reference (`bench/reference_app.py`) runs the service's own SQL,
imported from the service modules, with no auth, ORM or middleware. Requests/s count every
HTTP request (lock+redeem and reserve+purchase are two requests per cycle).

{chr(10).join(rows)}

Invariants afterwards ({total} checks of `python -m app check`):
{"all hold" if not bad else "VIOLATED: " + "; ".join(bad)}.
"""
    write_section("Hot paths", body)


if __name__ == "__main__":
    main()
