"""`make bench`: assign-random, lock+redeem, reserve+purchase and the reserve crowd through
the service and through the bare reference app (same SQL), side by side in one run, with
wrk; then the reserve-only flash crowd over many promos (`bench/flash_crowd.py`) and
`GET /me/promos` (`bench/eligibility.py`). `--only hot`, `--only reserve-flash` or `--only
eligibility` runs one of the three.

Seeds a book of 1,000,000 codes, 100,000 users, a multi-use book with one code per client,
a promo with 1,000,000 units, and a promo per run for the reserve crowd; starts both apps
with the same worker count and pool size on 127.0.0.1; drives each scenario for a fixed
time at 32 and 128 connections; checks the invariants; writes the "Hot paths" (and "Reserve
flash crowd", "Eligibility") sections of docs/benchmarks.md. Stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import shutil
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import asyncpg

from app.check import run_checks, violations
from app.core.migrations import upgrade_to_head
from app.core.security import Role, TokenService
from bench.common import SECRET, machine, throwaway_database, worker, write_section
from bench.eligibility import run_eligibility, write_eligibility
from bench.flash_crowd import run_flash_crowd, write_flash_crowd
from bench.load import LUA, Run, batch_sizes, both_apps, commits, vacuum, wrk, wrk_with_cpu

CODES = 1_000_000
USERS = 100_000
UNITS = 1_000_000
SLOTS = 256
PROFILES = ("hot", "reserve-flash", "eligibility")
RunKey = tuple[str, int, str]  # scenario, connections, "reference" or "service"
SCENARIOS = {
    "assign-random": ("assign.lua", {201}),
    "lock+redeem": ("lock_redeem.lua", {200}),
    "reserve+purchase": ("reserve_purchase.lua", {200, 201}),
    "reserve": ("reserve.lua", {201}),
}
# The reserve crowd: every run has a promo of its own per app, with a unit for every user.
CROWD_UNITS = USERS


@dataclass
class Seeded:
    books: list[uuid.UUID]  # one per app: per-user counts grow with each app's own run
    promos: list[uuid.UUID]
    users_file: Path
    crowd_promos: list[Path]  # per app, a file of its reserve-crowd promos, one per run
    crowd: Path  # <connections>/<slot>.txt: "token user_id" lines, the crowd split by connection


async def seed(url: str, workdir: Path, rounds: int, levels: list[int]) -> Seeded:
    """`rounds`: how many runs a scenario has, both apps together (lock+redeem gets codes of
    its own for each, the reserve crowd a promo of its own); `levels`: the connection counts,
    each with the crowd split into that many slices."""
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
        crowd_promos = []
        for app in ("reference", "service"):
            ids = [
                await conn.fetchval(
                    "INSERT INTO promos (product_id, title, promo_price_cents, quantity,"
                    " max_per_user, starts_at, ends_at) VALUES ($1, $3, 500, $2, 1,"
                    " now() - interval '1 minute', now() + interval '1 day') RETURNING id",
                    product,
                    CROWD_UNITS,
                    f"bench crowd {run} ({app})",
                )
                for run in range(1, rounds // 2 + 1)
            ]
            crowd_promos.append(workdir / f"crowd-promos-{app}.txt")
            crowd_promos[-1].write_text("".join(f"{i}\n" for i in ids))
        crowd_users = await conn.fetch("SELECT id FROM users ORDER BY id")
        await conn.execute("VACUUM ANALYZE")
        print(f"seeded in {time.monotonic() - started:.1f} s", flush=True)
    finally:
        await conn.close()
    tokens = TokenService(secret=SECRET, ttl_seconds=86_400)
    users_file = workdir / "users.txt"
    users_file.write_text("".join(f"{tokens.issue(r['id'], Role.user)} {r['id']}\n" for r in slots))
    crowd_lines = [f"{tokens.issue(r['id'], Role.user)} {r['id']}\n" for r in crowd_users]
    crowd = workdir / "crowd"
    for connections in levels:
        (crowd / str(connections)).mkdir(parents=True)
        for slot in range(1, connections + 1):
            share = crowd_lines[slot - 1 :: connections]
            (crowd / str(connections) / f"{slot}.txt").write_text("".join(share))
    return Seeded(
        books=books,
        promos=promos,
        users_file=users_file,
        crowd_promos=crowd_promos,
        crowd=crowd,
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


def hot_paths(
    url: str, args: argparse.Namespace, workdir: Path, batches: dict[str, dict[str, float]]
) -> dict[RunKey, Run]:
    """Each chosen scenario at each connection level, reference and service alternating;
    `batches` gets the service's batch sizes (`coalesced_batch_size`) at the end."""
    chosen = {name: SCENARIOS[name] for name in args.scenarios.split(",")}
    levels = [int(c) for c in args.connections.split(",")]
    runs_per_app = 1 + args.rounds + len(levels) - 1  # a warm-up, then the measurements
    seeded = asyncio.run(seed(url, workdir, 2 * runs_per_app, levels))
    results: dict[RunKey, Run] = {}
    # The worker runs beside both apps as it does in a deployment: its chain sealer signs
    # the history the requests write, every SEAL_SECONDS.
    with worker(url), both_apps(url, args) as (ref_port, svc_port):
        common = {
            "BENCH_LUA": str(LUA),
            "BENCH_USERS": str(seeded.users_file),
            "BENCH_BASE": "/api/v1",
        }
        targets = [
            (
                target,
                port,
                {
                    **common,
                    "BENCH_BOOK": str(book),
                    "BENCH_PROMO": str(promo),
                    "BENCH_PROMOS": str(crowd_promos),
                },
            )
            for target, port, book, promo, crowd_promos in zip(
                ("reference", "service"),
                (ref_port, svc_port),
                seeded.books,
                seeded.promos,
                seeded.crowd_promos,
                strict=True,
            )
        ]

        def each_run(target: str, connections: int, lua_env: dict[str, str]) -> dict[str, str]:
            """The run's own number per app (the reserve crowd's promo) and crowd slices."""
            return {
                **lua_env,
                "BENCH_RUN": str(next(run_numbers[target])),
                "BENCH_CROWD": str(seeded.crowd / str(connections)),
            }

        for name, (script, expected) in chosen.items():
            run_numbers = {target: itertools.count(1) for target, _, _ in targets}
            for target, port, lua_env in targets:
                wrk(port, script, levels[0], args.warmup, each_run(target, levels[0], lua_env))
            for level, connections in enumerate(levels):
                runs: dict[str, list[Run]] = {"reference": [], "service": []}
                for round_ in range(args.rounds if level == 0 else 1):
                    # Who goes first alternates, so neither app always follows the other.
                    for target, port, lua_env in targets[:: -1 if round_ % 2 else 1]:
                        asyncio.run(vacuum(url))
                        before = asyncio.run(commits(url))
                        run = wrk_with_cpu(
                            port,
                            script,
                            connections,
                            args.seconds,
                            each_run(target, connections, lua_env),
                            target,
                        )
                        # The worker commits too (sweeps, the sealer): a few a second.
                        committed = asyncio.run(commits(url, settle=True)) - before
                        run.commits_per_request = committed / max(1, run.requests)
                        runs[target].append(run)
                        print(
                            f"{name:17} c={connections:<4} {target:9} {run.rps:8.0f} req/s"
                            f"  p50 {run.p50_ms:6.1f} ms  p99 {run.p99_ms:6.1f} ms"
                            f"  commits/req {run.commits_per_request:.2f}"
                            f"  cpu ms/req {target} {run.cpu_ms[target]:.2f}"
                            f" postgres {run.cpu_ms['postgres']:.2f} wrk {run.cpu_ms['wrk']:.2f}"
                            f"  errors {run.errors(expected)}  {run.statuses}",
                            flush=True,
                        )
                for target, target_runs in runs.items():
                    results[(name, connections, target)] = Run.combined(target_runs)
        batches.update(batch_sizes(svc_port))
    return results


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
    parser.add_argument(
        "--flash-rounds",
        type=int,
        default=3,
        help="service runs at every connection level of the reserve-only flash crowd, each"
        " between two reference runs",
    )
    parser.add_argument(
        "--only",
        choices=PROFILES,
        help="run one profile: the hot paths, the reserve-only flash crowd, or eligibility",
    )
    parser.add_argument(
        "--coalesce",
        choices=("on", "off"),
        default="on",
        help="the service's COALESCE_HOT_PATHS: concurrent assigns and reserves in batches",
    )
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed: apt-get install -y wrk")
    profiles = [args.only] if args.only else list(PROFILES)
    workdir = Path(tempfile.mkdtemp(prefix="cf-bench-hot-"))
    with throwaway_database("hot") as url:
        upgrade_to_head(url)
        batches: dict[str, dict[str, float]] = {}
        results = hot_paths(url, args, workdir, batches) if "hot" in profiles else {}
        total, bad = asyncio.run(check(url))
    flash = None
    if "reserve-flash" in profiles:
        # A database of its own: its held rows pile up from none, not from what the hot
        # paths' reserve crowd left (hundreds of thousands of holds and a million units
        # more, which outgrow shared_buffers and slow both apps alike).
        with throwaway_database("flash") as flash_url:
            upgrade_to_head(flash_url)
            flash = run_flash_crowd(flash_url, args, workdir)
            flash_total, flash_bad = asyncio.run(check(flash_url))
        total, bad = total + flash_total, bad + flash_bad
    eligible = None
    if "eligibility" in profiles:
        # A database of its own: the other profiles' promos would be candidates too.
        with throwaway_database("eligibility") as eligibility_url:
            upgrade_to_head(eligibility_url)
            eligible = run_eligibility(eligibility_url, args, workdir)
    shutil.rmtree(workdir, ignore_errors=True)
    print(f"invariants: {total - len(bad)} passed, {len(bad)} failed")
    for line in bad:
        print("  VIOLATION", line)
    if not args.no_write:
        if results and args.scenarios == ",".join(SCENARIOS):
            levels = [int(c) for c in args.connections.split(",")]
            write(results, levels, args, batches, total, bad)
        if flash is not None:
            write_flash_crowd(flash, args, total, bad)
        if eligible is not None:
            write_eligibility(eligible, args)
    if bad:
        sys.exit(1)


def write(
    results: dict[RunKey, Run],
    levels: list[int],
    args: argparse.Namespace,
    batches: dict[str, dict[str, float]],
    total: int,
    bad: list[str],
) -> None:
    rows = [
        "| scenario | conns | reference req/s | service req/s | ratio | reference p50 / p99"
        " | service p50 / p99 | commits / request (ref / svc)"
        " | CPU ms / request: app, postgres (ref / svc) | service errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, (_, expected) in SCENARIOS.items():
        for c in levels:
            ref, svc = results[(name, c, "reference")], results[(name, c, "service")]
            ratio = svc.rps / ref.rps if ref.rps else 0.0
            rows.append(
                f"| {name} | {c} | {ref.rps:,.0f} | {svc.rps:,.0f} | **{ratio:.2f}x** |"
                f" {ref.p50_ms:.1f} / {ref.p99_ms:.1f} ms | {svc.p50_ms:.1f} / {svc.p99_ms:.1f} ms"
                f" | {ref.commits_per_request:.2f} / {svc.commits_per_request:.2f}"
                f" | {ref.cpu_ms.get('reference', 0):.2f}, {ref.cpu_ms.get('postgres', 0):.2f}"
                f" / {svc.cpu_ms.get('service', 0):.2f}, {svc.cpu_ms.get('postgres', 0):.2f}"
                f" | {svc.errors(expected)} |"
            )
    body = f"""
`make bench` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC — {machine()}. Service and reference
each run {args.workers} uvicorn workers with {args.pool} pooled connections per worker, on
the same PostgreSQL, with wrk on the same box (one connection per wrk thread); {args.seconds} s
per measurement after a {args.warmup} s warm-up, a `VACUUM` and a `CHECKPOINT`, reference
and service alternating. At {levels[0]} connections each app runs {args.rounds} rounds, who goes
first alternating: req/s and p50 are their medians, p99 the worst of them. One
`python -m app worker` runs beside both, as in a deployment (notifications, sweeps, and the
chain sealer signing the history every `SEAL_SECONDS`). Data:
a book of {CODES:,} codes per app for assign (each app counts only its own
assignments per user), {USERS:,} users, {SLOTS} clients each with a multi-use code
(lock → redeem with the `lock_id`, repeated), a promo of {UNITS:,} units per app (reserve →
purchase, repeated), and for the reserve crowd a promo of {CROWD_UNITS:,} units per app and run
(one reserve per request, each by a user who holds nothing on it yet, nobody buying: the
{USERS:,} users split between the connections). The reference (`bench/reference_app.py`)
runs the service's own SQL, imported from the service modules, with no auth, ORM or
middleware. Requests/s count every
HTTP request (lock+redeem and reserve+purchase are two requests per cycle).

{chr(10).join(rows)}

{_coalescing(args, batches)}

Invariants afterwards ({total} checks of `python -m app check`):
{"all hold" if not bad else "VIOLATED: " + "; ".join(bad)}.
"""
    write_section("Hot paths", body)


def _coalescing(args: argparse.Namespace, batches: dict[str, dict[str, float]]) -> str:
    """How the service batched its assigns and reserves (`coalesced_batch_size`)."""
    if args.coalesce == "off":
        return "Coalescing off (`COALESCE_HOT_PATHS=false`): one transaction per request."
    parts = []
    for path, h in sorted(batches.items()):
        count = h.get("count", 0.0)
        if not count:
            continue
        bounds = sorted((float(le), n) for le, n in h.items() if le not in ("sum", "count"))
        shares, below = [], 0.0
        for bound, cumulative in bounds:
            if cumulative > below:
                label = "≤ " + (f"{bound:g}" if bound != float("inf") else "more")
                shares.append(f"{label}: {100 * (cumulative - below) / count:.0f} %")
            below = cumulative
        parts.append(
            f"`{path}` {count:,.0f} batches, {h.get('sum', 0.0) / count:.1f} requests each"
            f" on average ({', '.join(shares)})"
        )
    listed = "; ".join(parts) or "no batch recorded"
    return f"Coalescing on (`COALESCE_HOT_PATHS=true`), batch sizes over the whole run: {listed}."


if __name__ == "__main__":
    main()
