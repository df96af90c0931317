"""The eligibility profile of `make bench` (alone: `python -m bench.hotpaths --only
eligibility`): `GET /me/promos` with 10,000 stores and 1,000 running promos (the data of
`bench/promos.py`), through the service and through the reference app running the same
statement (`app.promos.listings._ELIGIBLE`), alternating, with wrk, at 8 and 32
connections; then where the time goes inside PostgreSQL (`EXPLAIN (ANALYZE, BUFFERS)` of
the statement for a sample of the users).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import asyncpg

from app.core.security import Role, TokenService
from app.promos.listings import _ELIGIBLE
from bench.common import SECRET, machine, write_section
from bench.load import LUA, Run, both_apps, load_average, wrk, wrk_with_cpu
from bench.promos import EYE_USERS, PROMOS, STORES
from bench.promos import seed as seed_promos

SCRIPT = "me_promos.lua"
EXPECTED = {200}
TARGETS = ("reference", "service")
LEVELS = (8, 32)
LIMIT = 50  # the route's default page
GOAL_P99_MS = 50.0


@dataclass
class Plans:
    execution_ms: list[float]
    planning_ms: list[float]
    buffers: list[int]
    rows: list[int]


@dataclass
class Eligibility:
    runs: dict[tuple[int, str], Run]
    plans: Plans
    load_before: str
    load_after: str


async def _users_and_plans(url: str, crowd: Path) -> Plans:
    """Seeds, writes each connection level's slices of the users, and explains the
    statement for 200 of them."""
    eyes, _, _ = await seed_promos(url)
    tokens = TokenService(secret=SECRET, ttl_seconds=86_400)
    lines = [f"{tokens.issue(u, Role.user)} {u}\n" for u in eyes]
    for connections in LEVELS:
        (crowd / str(connections)).mkdir(parents=True)
        for slot in range(1, connections + 1):
            (crowd / str(connections) / f"{slot}.txt").write_text(
                "".join(lines[slot - 1 :: connections])
            )
    conn = await asyncpg.connect(url)
    try:
        plans = Plans([], [], [], [])
        for user in eyes[:200]:
            raw = await conn.fetchval(
                f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {_ELIGIBLE}", user, LIMIT
            )
            [top] = json.loads(raw) if isinstance(raw, str) else raw
            plans.execution_ms.append(top["Execution Time"])
            plans.planning_ms.append(top["Planning Time"])
            plan = top["Plan"]
            plans.buffers.append(
                plan.get("Shared Hit Blocks", 0) + plan.get("Shared Read Blocks", 0)
            )
            plans.rows.append(plan["Actual Rows"])
        return plans
    finally:
        await conn.close()


def run_eligibility(url: str, args: argparse.Namespace, workdir: Path) -> Eligibility:
    crowd = workdir / "eyes"
    plans = asyncio.run(_users_and_plans(url, crowd))
    runs: dict[tuple[int, str], Run] = {}
    load_before = load_average()
    with both_apps(url, args) as ports:
        targets = list(zip(TARGETS, ports, strict=True))

        def env(connections: int) -> dict[str, str]:
            return {
                "BENCH_LUA": str(LUA),
                "BENCH_BASE": "/api/v1",
                "BENCH_CROWD": str(crowd / str(connections)),
            }

        for _, port in targets:
            wrk(port, SCRIPT, LEVELS[0], args.warmup, env(LEVELS[0]))
        for connections in LEVELS:
            rounds: dict[str, list[Run]] = {t: [] for t in TARGETS}
            for round_ in range(args.rounds):
                for target, port in targets[:: -1 if round_ % 2 else 1]:
                    run = wrk_with_cpu(
                        port, SCRIPT, connections, args.seconds, env(connections), target
                    )
                    rounds[target].append(run)
                    print(
                        f"me-promos c={connections:<4} {target:9} {run.rps:8.0f} req/s"
                        f"  p50 {run.p50_ms:6.1f} ms  p99 {run.p99_ms:6.1f} ms"
                        f"  cpu ms/req {target} {run.cpu_ms[target]:.2f}"
                        f" postgres {run.cpu_ms['postgres']:.2f}"
                        f"  errors {run.errors(EXPECTED)}  {run.statuses}",
                        flush=True,
                    )
            for target, target_runs in rounds.items():
                runs[(connections, target)] = Run.combined(target_runs)
    return Eligibility(runs, plans, load_before, load_average())


def write_eligibility(result: Eligibility, args: argparse.Namespace) -> None:
    rows = [
        "| conns | reference req/s | service req/s | ratio | reference p50 / p99"
        " | service p50 / p99 | CPU ms / request: app, postgres (ref / svc) | service errors |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in LEVELS:
        ref, svc = result.runs[(c, "reference")], result.runs[(c, "service")]
        rows.append(
            f"| {c} | {ref.rps:,.0f} | {svc.rps:,.0f} | **{svc.rps / ref.rps:.2f}x** |"
            f" {ref.p50_ms:.1f} / {ref.p99_ms:.1f} ms | {svc.p50_ms:.1f} / {svc.p99_ms:.1f} ms"
            f" | {ref.cpu_ms.get('reference', 0):.2f}, {ref.cpu_ms.get('postgres', 0):.2f}"
            f" / {svc.cpu_ms.get('service', 0):.2f}, {svc.cpu_ms.get('postgres', 0):.2f}"
            f" | {svc.errors(EXPECTED)} |"
        )
    plans = result.plans

    def spread(values: list[float]) -> str:
        ordered = sorted(values)
        p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
        return f"median {statistics.median(ordered):.2f}, p99 {p99:.2f}, max {ordered[-1]:.2f}"

    at = result.runs[(LEVELS[0], "service")].p99_ms
    verdict = "met" if at < GOAL_P99_MS else "NOT MET"
    body = f"""
`make bench` (eligibility profile) on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC — {machine()};
load average (1 / 5 / 15 min) {result.load_before} before, {result.load_after} after.
`GET /me/promos` (the default page of {LIMIT}) with {STORES:,} stores in a 40 km square,
{PROMOS:,} running promos (radius 2 km, one in five limited to a rule segment) and
{EYE_USERS:,} users placed at random in the square, each connection cycling through its
own share of them. Service and reference (`bench/reference_app.py`, the same statement)
each run {args.workers} uvicorn workers with {args.pool} pooled connections per worker, with
wrk on the same box; {args.seconds} s per run, {args.rounds} rounds per app at each level,
who goes first alternating (req/s and p50 the median, p99 the worst).

{chr(10).join(rows)}

Inside PostgreSQL (`EXPLAIN (ANALYZE, BUFFERS)` of the statement for 200 of the users, one
at a time): execution ms {spread(plans.execution_ms)}; planning ms
{spread(plans.planning_ms)}; buffers {spread([float(b) for b in plans.buffers])}; promos
answered {statistics.mean(plans.rows):.1f} on average.

Goal: p99 < {GOAL_P99_MS:.0f} ms at {LEVELS[0]} connections: **{verdict}** ({at:.1f} ms).
"""
    write_section("Eligibility", body)
