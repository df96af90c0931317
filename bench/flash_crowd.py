"""The reserve-only flash crowd, a profile of `make bench` (alone: `make bench-flash`, i.e.
`python -m bench.hotpaths --only reserve-flash`): many promos, every request a new hold,
nobody buying, so held rows pile up through the run, lapsing after their 60 s and staying
`held` (no worker runs to sweep them). The service and the reference app (the same SQL)
take turns on the same database at each connection level, the reference first and last
(reference, service, reference, ..., service, reference), so each service run is measured
against the mean of the reference runs just before and just after it: both sides at the
same held rows on average, whichever way the costs drift as the rows grow. The first and
the last service run are reported separately, so a reserve whose cost grows with held rows
shows as a last run slower than the first, beside the reference's own drift over the same
span.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import asyncpg

from app.core.security import Role, TokenService
from bench.common import SECRET, machine, write_section
from bench.load import LUA, Run, both_apps, load_average, vacuum, wrk, wrk_with_cpu

PROMOS = 2_500  # per app
# Units per promo: more than the holds one promo gets in a whole run (each connection
# walks every promo at most once per run), so every reserve claims a free unit.
UNITS = 400
SCRIPT = "reserve_flash.lua"
EXPECTED = {201}
TARGETS = ("reference", "service")


@dataclass
class FlashSeed:
    promos: dict[str, Path]  # per app, a file of its promo ids
    users: Path  # "token user_id" lines; each run takes `stride` of its own
    stride: int


@dataclass
class FlashRound:
    connections: int
    # 1-based, per connection level and app: service run k runs between reference runs k
    # and k + 1
    round: int
    target: str
    run: Run
    held_before: int  # held rows in the database (both apps' promos) when the run began
    held_after: int


@dataclass
class FlashCrowd:
    rounds: list[FlashRound]
    load_before: str
    load_after: str

    def at(self, connections: int, round_: int, target: str) -> FlashRound:
        return next(
            r
            for r in self.rounds
            if (r.connections, r.round, r.target) == (connections, round_, target)
        )

    def reference_around(self, connections: int, round_: int) -> Run:
        """The reference at the service's `round_`: the mean of its runs just before and
        just after that service run (held rows grow steadily, so the two bracket it)."""
        runs = [self.at(connections, k, "reference").run for k in (round_, round_ + 1)]
        return Run(
            rps=sum(r.rps for r in runs) / 2,
            p50_ms=sum(r.p50_ms for r in runs) / 2,
            p99_ms=sum(r.p99_ms for r in runs) / 2,
            cpu_ms={
                side: sum(r.cpu_ms.get(side, 0.0) for r in runs) / 2
                for side in ("reference", "postgres")
            },
        )


async def seed(url: str, workdir: Path, runs: int, stride: int) -> FlashSeed:
    """`runs * stride` users at one store, `PROMOS` promos of `UNITS` units per app."""
    conn = await asyncpg.connect(url)
    try:
        started = time.monotonic()
        users = await conn.fetch(
            "INSERT INTO users (email, lat, lng) SELECT 'flash-' || g || '@example.com',"
            " 40.4168, -3.7038 FROM generate_series(1, $1) g RETURNING id",
            runs * stride,
        )
        product = await conn.fetchval(
            "WITH s AS (INSERT INTO stores (name, lat, lng) VALUES ('flash', 40.4168, -3.7038)"
            " RETURNING id) INSERT INTO products (store_id, name, price_cents)"
            " SELECT id, 'flash', 1000 FROM s RETURNING id"
        )
        promos = {}
        for app in TARGETS:
            ids = await conn.fetch(
                "INSERT INTO promos (product_id, title, promo_price_cents, quantity,"
                " starts_at, ends_at) SELECT $1, $2 || ' ' || g, 500, $3,"
                " now() - interval '1 minute', now() + interval '1 day'"
                " FROM generate_series(1, $4) g RETURNING id",
                product,
                f"flash ({app})",
                UNITS,
                PROMOS,
            )
            promos[app] = workdir / f"flash-promos-{app}.txt"
            promos[app].write_text("".join(f"{r['id']}\n" for r in ids))
        await conn.execute("VACUUM ANALYZE")
        print(f"flash crowd seeded in {time.monotonic() - started:.1f} s", flush=True)
    finally:
        await conn.close()
    tokens = TokenService(secret=SECRET, ttl_seconds=86_400)
    users_file = workdir / "flash-users.txt"
    users_file.write_text("".join(f"{tokens.issue(r['id'], Role.user)} {r['id']}\n" for r in users))
    return FlashSeed(promos=promos, users=users_file, stride=stride)


async def held_rows(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        count: int = await conn.fetchval("SELECT count(*) FROM reservations WHERE status = 'held'")
        return count
    finally:
        await conn.close()


def run_flash_crowd(url: str, args: argparse.Namespace, workdir: Path) -> FlashCrowd:
    """A warm-up per app, then at each connection level `args.flash_rounds` service runs,
    each between two reference runs (reference first and last); a `VACUUM` and a
    `CHECKPOINT` before every run."""
    levels = [int(c) for c in args.connections.split(",")]
    runs = len(TARGETS) + len(levels) * (2 * args.flash_rounds + 1)
    seeded = asyncio.run(seed(url, workdir, runs, max(levels)))
    numbers = itertools.count(1)  # each run's own users (BENCH_ROUND)

    def env(target: str) -> dict[str, str]:
        return {
            "BENCH_LUA": str(LUA),
            "BENCH_USERS": str(seeded.users),
            "BENCH_STRIDE": str(seeded.stride),
            "BENCH_PROMOS": str(seeded.promos[target]),
            "BENCH_BASE": "/api/v1",
            "BENCH_ROUND": str(next(numbers)),
        }

    load_before = load_average()
    rounds: list[FlashRound] = []
    with both_apps(url, args) as ports:
        port_of = dict(zip(TARGETS, ports, strict=True))
        for target in TARGETS:
            wrk(port_of[target], SCRIPT, levels[0], args.warmup, env(target))
        for connections in levels:
            turns = ["reference", *["service", "reference"] * args.flash_rounds]
            for turn, target in enumerate(turns):
                round_ = turn // 2 + 1
                asyncio.run(vacuum(url))
                before = asyncio.run(held_rows(url))
                run = wrk_with_cpu(
                    port_of[target], SCRIPT, connections, args.seconds, env(target), target
                )
                after = asyncio.run(held_rows(url))
                rounds.append(FlashRound(connections, round_, target, run, before, after))
                print(
                    f"reserve-flash c={connections:<4} round {round_} {target:9}"
                    f" {run.rps:8.0f} req/s  p50 {run.p50_ms:6.1f} ms"
                    f"  p99 {run.p99_ms:6.1f} ms  errors {run.errors(EXPECTED)}"
                    f"  cpu ms/req {target} {run.cpu_ms[target]:.2f}"
                    f" postgres {run.cpu_ms['postgres']:.2f}"
                    f"  held {before:,} -> {after:,}  {run.statuses}",
                    flush=True,
                )
    return FlashCrowd(rounds, load_before, load_average())


def verdicts(flash: FlashCrowd, levels: list[int], last: int) -> list[str]:
    """The acceptance, level by level: the service at >= 0.85x the reference in its first
    and its last run, its p99 no worse than the reference's, and its last run within 10 %
    of its first once the database's own drift is taken out (the reference, running the
    same SQL on the same growing tables, drifts by that much too: its bracketing runs
    over the same span)."""
    lines = []
    for c in levels:
        runs = [(flash.at(c, k, "service").run, flash.reference_around(c, k)) for k in (1, last)]
        ratios = [svc.rps / ref.rps for svc, ref in runs]
        p99_ok = all(svc.p99_ms <= ref.p99_ms for svc, ref in runs)
        drift = runs[1][0].rps / runs[0][0].rps
        ref_drift = runs[1][1].rps / runs[0][1].rps
        own = drift / ref_drift
        ok = min(ratios) >= 0.85 and p99_ok and abs(1 - own) <= 0.10
        lines.append(
            f"- {c} connections: ratio {ratios[0]:.2f}x first, {ratios[1]:.2f}x last;"
            f" service p99 {'no worse than' if p99_ok else 'WORSE than'} the reference's;"
            f" service last run at {drift:.2f}x its first, the reference over the same span"
            f" {ref_drift:.2f}x, so the service's own drift {own:.2f}x"
            f" — **{'met' if ok else 'NOT MET'}**"
        )
    return lines


def write_flash_crowd(
    flash: FlashCrowd, args: argparse.Namespace, total: int, bad: list[str]
) -> None:
    levels = [int(c) for c in args.connections.split(",")]
    last = args.flash_rounds
    rows = [
        "| conns | service run | held rows at start | reference req/s | service req/s | ratio"
        " | reference p50 / p99 | service p50 / p99 | PostgreSQL CPU ms/req reference / service"
        " | service errors |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in levels:
        for round_, label in ((1, "first"), (last, "last")):
            ref, svc = flash.reference_around(c, round_), flash.at(c, round_, "service")
            ratio = svc.run.rps / ref.rps if ref.rps else 0.0
            rows.append(
                f"| {c} | {label} ({round_} of {last}) | {svc.held_before:,} |"
                f" {ref.rps:,.0f} | {svc.run.rps:,.0f} | **{ratio:.2f}x** |"
                f" {ref.p50_ms:.1f} / {ref.p99_ms:.1f} ms"
                f" | {svc.run.p50_ms:.1f} / {svc.run.p99_ms:.1f} ms"
                f" | {ref.cpu_ms['postgres']:.2f} / {svc.run.cpu_ms['postgres']:.2f}"
                f" | {svc.run.errors(EXPECTED)} |"
            )
    end = max(r.held_after for r in flash.rounds)
    body = f"""
`make bench-flash` (also part of `make bench`) on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC —
{machine()}; load average (1 / 5 / 15 min) {flash.load_before} before, {flash.load_after}
after (the box is shared: other work competes for the cores). Reserve only, nobody buying:
{PROMOS:,} promos per app of {UNITS} units each, every request a new hold (a user who
holds nothing on that promo yet), so held rows pile up through the run ({end:,} at the
end, most of them lapsed; no worker sweeps them). Service and reference (the same SQL,
`bench/reference_app.py`) each run {args.workers} uvicorn workers with {args.pool} pooled
connections per worker on the same PostgreSQL, with wrk on the same box; {args.seconds} s
per run after a {args.warmup} s warm-up per app, a `VACUUM` and a `CHECKPOINT`. At each
level {last} service runs, each between two reference runs (reference, service,
reference, …): the reference columns are the mean of the runs just before and just after
the service's, so both sides are measured at the same held rows. "Held rows at start":
every held reservation in the database when the service's run began. PostgreSQL CPU:
every postgres process on the box, per request of the run. The `ANALYZE` before each run
also makes both apps plan their cached statements again for the tables as they are then
(docs/decisions.md, "A reserve's plan outlives the table sizes it was made for").

{chr(10).join(rows)}

{chr(10).join(verdicts(flash, levels, last))}

Invariants afterwards ({total} checks of `python -m app check`):
{"all hold" if not bad else "VIOLATED: " + "; ".join(bad)}.
"""
    write_section("Reserve flash crowd", body)
