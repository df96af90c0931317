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
import contextlib
import itertools
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import asyncpg

from app.audit.ledgers import LEDGERS
from app.check import run_checks, violations
from app.core.migrations import upgrade_to_head
from app.core.security import Role, TokenService
from bench.common import SECRET, machine, throwaway_database, worker, write_section
from bench.eligibility import run_eligibility, write_eligibility
from bench.flash_crowd import run_flash_crowd, write_flash_crowd
from bench.load import (
    LUA,
    Run,
    Variant,
    batch_sizes,
    both_apps,
    commits,
    load_average,
    vacuum,
    wrk,
    wrk_with_cpu,
)

CODES = 1_000_000
USERS = 100_000
UNITS = 1_000_000
SLOTS = 256
PROFILES = ("hot", "reserve-flash", "eligibility")
RunKey = tuple[str, int, str]  # scenario, connections, app ("reference", "service", ...)
SCENARIOS = {
    "assign-random": ("assign.lua", {201}),
    "lock+redeem": ("lock_redeem.lua", {200}),
    "reserve+purchase": ("reserve_purchase.lua", {200, 201}),
    "reserve": ("reserve.lua", {201}),
}


@dataclass(frozen=True)
class Arm:
    """A setting of the worker that the rounds alternate (`--toggle-sealer`)."""

    label: str
    worker_env: tuple[tuple[str, str], ...] = ()


# The reserve crowd: every run has a promo of its own per app, with a unit for every user.
CROWD_UNITS = USERS


@dataclass
class Seeded:
    books: list[uuid.UUID]  # one per app: per-user counts grow with each app's own run
    promos: list[uuid.UUID]
    users_file: Path
    crowd_promos: list[Path]  # per app, a file of its reserve-crowd promos, one per run
    crowd: Path  # <connections>/<slot>.txt: "token user_id" lines, the crowd split by connection


async def seed(url: str, workdir: Path, rounds: int, levels: list[int], apps: list[str]) -> Seeded:
    """`rounds`: how many runs a scenario has, all apps together (lock+redeem gets codes of
    its own for each, the reserve crowd a promo of its own); `levels`: the connection counts,
    each with the crowd split into that many slices; `apps`: who runs, each with its own
    book and promos."""
    conn = await asyncpg.connect(url)
    try:
        started = time.monotonic()
        await conn.execute(
            "INSERT INTO users (email, lat, lng) SELECT 'bench-' || g || '@example.com',"
            " 40.4168, -3.7038 FROM generate_series(1, $1) g",
            USERS,
        )
        books = []
        for index, app in enumerate(apps):
            book = await conn.fetchval(
                "INSERT INTO books (name, max_codes_per_user) VALUES ($1, NULL) RETURNING id",
                f"bench assign ({app})",
            )
            await conn.execute(
                "INSERT INTO codes (book_id, code)"
                " SELECT $1, $2 || g FROM generate_series(1, $3) g",
                book,
                f"BA-{index}-",
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
            for app in apps
        ]
        crowd_promos = []
        for app in apps:
            ids = [
                await conn.fetchval(
                    "INSERT INTO promos (product_id, title, promo_price_cents, quantity,"
                    " max_per_user, starts_at, ends_at) VALUES ($1, $3, 500, $2, 1,"
                    " now() - interval '1 minute', now() + interval '1 day') RETURNING id",
                    product,
                    CROWD_UNITS,
                    f"bench crowd {run} ({app})",
                )
                for run in range(1, rounds // len(apps) + 1)
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
    url: str,
    args: argparse.Namespace,
    workdir: Path,
    batches: dict[str, dict[str, float]],
    variants: tuple[Variant, ...] = (),
    arms: tuple[Arm, ...] = (Arm(""),),
    each_round: dict[RunKey, list[Run]] | None = None,
) -> dict[RunKey, Run]:
    """Each chosen scenario at each connection level, the apps alternating (the reference,
    the service, then `variants`); each round once per arm (a worker setting, in order).
    Results are keyed by app, or "app · arm" when there are several arms; `each_round` gets
    every run, in round order. `batches` gets the service's batch sizes
    (`coalesced_batch_size`) at the end."""
    chosen = {name: SCENARIOS[name] for name in args.scenarios.split(",")}
    levels = [int(c) for c in args.connections.split(",")]
    apps = ["reference", "service", *(v.label for v in variants)]
    # A warm-up, then the measurements, in every arm.
    runs_per_app = 1 + len(arms) * (args.rounds + len(levels) - 1)
    seeded = asyncio.run(seed(url, workdir, len(apps) * runs_per_app, levels, apps))
    results: dict[RunKey, Run] = {}
    # The worker runs beside the apps as it does in a deployment: its chain sealer signs
    # the history the requests write, every SEAL_SECONDS. With several arms it is started
    # again with each arm's settings.
    with contextlib.ExitStack() as arm_worker, both_apps(url, args, variants) as ports:
        started = False

        def enter(arm: Arm) -> None:
            """The worker with `arm`'s settings; with several arms, first the logs that the
            run before wrote are sealed by a worker of the default settings, so no run pays
            for another's backlog. With one arm, one worker for the whole run."""
            nonlocal started
            if started and len(arms) == 1:
                return
            started = True
            arm_worker.close()
            if len(arms) > 1:
                with worker(url):
                    asyncio.run(sealed(url))
            arm_worker.enter_context(worker(url, dict(arm.worker_env)))

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
                apps, ports, seeded.books, seeded.promos, seeded.crowd_promos, strict=True
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
            enter(arms[0])
            for target, port, lua_env in targets:
                wrk(port, script, levels[0], args.warmup, each_run(target, levels[0], lua_env))
            for level, connections in enumerate(levels):
                runs: dict[str, list[Run]] = {}
                for round_ in range(args.rounds if level == 0 else 1):
                    # Who goes first alternates, so no app always follows the same one; so
                    # does the order of the arms.
                    for arm in arms[:: -1 if round_ % 2 else 1]:
                        enter(arm)
                        for target, port, lua_env in targets[:: -1 if round_ % 2 else 1]:
                            key = f"{target} · {arm.label}" if len(arms) > 1 else target
                            asyncio.run(vacuum(url))
                            before = asyncio.run(commits(url))
                            run = wrk_with_cpu(
                                port,
                                script,
                                connections,
                                args.seconds,
                                each_run(target, connections, lua_env),
                                "reference" if target == "reference" else "service",
                            )
                            # The worker commits too (sweeps, the sealer): a few a second.
                            committed = asyncio.run(commits(url, settle=True)) - before
                            run.commits_per_request = committed / max(1, run.requests)
                            runs.setdefault(key, []).append(run)
                            print(
                                f"{name:17} c={connections:<4} {key:9} {run.rps:8.0f} req/s"
                                f"  p50 {run.p50_ms:6.1f} ms  p99 {run.p99_ms:6.1f} ms"
                                f"  commits/req {run.commits_per_request:.2f}"
                                f"  cpu ms/req app {run.cpu_ms.get('service', 0):.2f}"
                                f" {run.cpu_ms.get('reference', 0):.2f}"
                                f" postgres {run.cpu_ms['postgres']:.2f}"
                                f" wrk {run.cpu_ms['wrk']:.2f}"
                                f"  errors {run.errors(expected)}  {run.statuses}",
                                flush=True,
                            )
                for key, key_runs in runs.items():
                    results[(name, connections, key)] = Run.combined(key_runs)
                    if each_round is not None:
                        each_round[(name, connections, key)] = key_runs
        batches.update(batch_sizes(ports[1]))
    return results


async def sealed(url: str) -> None:
    """Until every row of the sealed logs is in a block (a worker must be sealing)."""
    conn = await asyncpg.connect(url)
    try:
        for ledger in LEDGERS:
            query = (
                f"SELECT coalesce((SELECT max(id) FROM {ledger.table}), 0)"
                f" <= coalesce((SELECT max(last_id) FROM {ledger.blocks}), 0)"
            )
            deadline = time.monotonic() + 120
            while not await conn.fetchval(query):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the {ledger.name} log was not sealed within 120 s")
                await asyncio.sleep(0.2)
    finally:
        await conn.close()


COMPARISONS = ("sealer", "tracing")


async def max_connections(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return int(await conn.fetchval("SHOW max_connections"))
    finally:
        await conn.close()


def compare(args: argparse.Namespace) -> int | str:
    """`--compare`: the hot paths with a feature on and off in the same run, against the
    reference; returns the exit status (or why it could not run)."""
    arms: tuple[Arm, ...] = (Arm(""),)
    variants: tuple[Variant, ...] = ()
    if args.compare == "sealer":
        arms = (
            Arm("sealer on", (("SEAL_SECONDS", "1"),)),
            # Never again after the pass at its start (which finds nothing: `sealed`).
            Arm("sealer off", (("SEAL_SECONDS", "1000000000"),)),
        )
    else:
        variants = (Variant("tracing on", {"OTEL_ENABLED": "true"}),)
        if args.baseline:
            variants += (Variant("baseline", cwd=args.baseline.resolve()),)
    workdir = Path(tempfile.mkdtemp(prefix="cf-bench-compare-"))
    load_before = load_average()
    each_round: dict[RunKey, list[Run]] = {}
    with throwaway_database("compare") as url:
        # Every app holds workers x pool connections; the worker and this script a few more.
        needed = (2 + len(variants)) * args.workers * args.pool + 10
        available = asyncio.run(max_connections(url))
        if available < needed:
            return (
                f"{len(variants) + 2} apps need max_connections >= {needed}; the server has"
                f" {available}: point DATABASE_URL at a server with more, or lower --pool"
            )
        upgrade_to_head(url)
        results = hot_paths(url, args, workdir, {}, variants, arms, each_round)
        total, bad = asyncio.run(check(url))
    shutil.rmtree(workdir, ignore_errors=True)

    def paired(key: RunKey, other: RunKey) -> str:
        """The ratio of two apps' req/s round by round (they ran back to back): median,
        and the range over the rounds."""
        ratios = sorted(
            a.rps / b.rps for a, b in zip(each_round[key], each_round[other], strict=True)
        )
        return f"{statistics.median(ratios):.2f}x ({ratios[0]:.2f} to {ratios[-1]:.2f})"

    control_name = "sealer off" if args.compare == "sealer" else "service"
    rows = [
        "| scenario | conns | app | req/s | p50 / p99 | / reference, by round"
        f" | / {control_name}, by round |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for (name, connections, key), run in sorted(results.items()):
        app, _, arm = key.partition(" · ")
        control = f"{app} · sealer off" if args.compare == "sealer" else "service"
        if key == control or (app == "reference" and args.compare != "sealer"):
            continue
        ref = " · ".join(filter(None, ("reference", arm)))
        to_ref = (
            "" if app == "reference" else paired((name, connections, key), (name, connections, ref))
        )
        rows.append(
            f"| {name} | {connections} | {key} | {run.rps:,.0f} | {run.p50_ms:.1f} /"
            f" {run.p99_ms:.1f} ms | {to_ref}"
            f" | {paired((name, connections, key), (name, connections, control))} |"
        )
    table = "\n".join(rows)
    print(table)
    print(f"invariants: {total - len(bad)} passed, {len(bad)} failed")
    if not args.no_write:
        write_comparison(args, table, load_before, total, bad)
    return 1 if bad else 0


def write_comparison(
    args: argparse.Namespace, table: str, load_before: str, total: int, bad: list[str]
) -> None:
    what = {
        "sealer": "every round run twice, the worker's chain sealer on (`SEAL_SECONDS=1`, the"
        ' default) and off, arms and apps alternating in order; "/ service" compares with the'
        " service in the same arm; the reference's rows are in the arm's ratio",
        "tracing": "a third app, the service with `OTEL_ENABLED=true` (no exporter endpoint:"
        " spans are made and dropped)"
        + (
            ", and a fourth run from another checkout (`--baseline`, below)"
            if args.baseline
            else ""
        )
        + ", all alternating with the reference and the service (tracing off, the default)",
    }[args.compare]
    body = f"""
`python -m bench.hotpaths --compare {args.compare}` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC —
{machine()}; load average before: {load_before}. The hot paths as in "Hot paths" ({args.seconds} s
runs, {args.rounds} rounds at the first connection level), {what}. req/s and p50 are the
medians of an app's rounds, p99 the worst.

{table}

Invariants afterwards ({total} checks): {"all hold" if not bad else "VIOLATED: " + "; ".join(bad)}.
"""
    write_section(f"Hot paths: {args.compare} on and off", body)


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
    parser.add_argument(
        "--compare",
        choices=COMPARISONS,
        help="the hot paths only, to see what a feature costs: `sealer`: every round twice,"
        " the worker's chain sealer on and off; `tracing`: a third app with OTEL_ENABLED=true"
        " (and --baseline's); writes its own section of docs/benchmarks.md",
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        help="with --compare tracing: a further app run from this checkout (same schema),"
        " e.g. one without the code under test",
    )
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    if args.baseline and args.compare != "tracing":
        parser.error("--baseline goes with --compare tracing")
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed: apt-get install -y wrk")
    if args.compare:
        sys.exit(compare(args))
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
