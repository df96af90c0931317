"""What `make bench`'s profiles share: the service and the reference app side by side on
one database, a `wrk` run against either and its result, and the `VACUUM` before each run."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import statistics
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import psutil
from prometheus_client.parser import text_string_to_metric_families

from bench.common import ROOT, free_port, process, service

LUA = ROOT / "bench" / "lua"


@dataclass
class Run:
    rps: float
    p50_ms: float
    p99_ms: float
    statuses: dict[int, int] = field(default_factory=dict)
    socket_errors: int = 0
    commits_per_request: float = 0.0  # database transactions per HTTP request, when measured
    # CPU milliseconds per HTTP request by side (the app run, postgres, wrk), when measured
    cpu_ms: dict[str, float] = field(default_factory=dict)

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
            commits_per_request=statistics.median(r.commits_per_request for r in runs),
            cpu_ms={
                side: statistics.median(r.cpu_ms.get(side, 0.0) for r in runs)
                for side in {side for r in runs for side in r.cpu_ms}
            },
        )

    @property
    def requests(self) -> int:
        return sum(self.statuses.values())


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
    # A run that names its own round keeps it; lock+redeem takes the next one.
    env = {"BENCH_ROUND": str(next(_ROUND) if "lock" in script else 1), **env}
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


def wrk_with_cpu(
    port: int, script: str, connections: int, seconds: int, env: dict[str, str], target: str
) -> Run:
    """`wrk`, with the CPU milliseconds per request that each side spent meanwhile in
    `run.cpu_ms`: the app run (`target`), PostgreSQL and wrk."""
    before = cpu_seconds()
    run = wrk(port, script, connections, seconds, env)
    after = cpu_seconds()
    spent: dict[str, float] = {}
    for side, pid in before.keys() & after.keys():  # a process that ended counts nothing
        spent[side] = spent.get(side, 0.0) + after[side, pid] - before[side, pid]
    run.cpu_ms = {
        side: 1000 * spent.get(side, 0.0) / max(1, run.requests)
        for side in (target, "postgres", "wrk")
    }
    return run


@dataclass(frozen=True)
class Variant:
    """A further service instance beside the two apps: its own environment on top of the
    service's, from its own checkout (`cwd`: one with the same schema)."""

    label: str
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path = ROOT


@contextlib.contextmanager
def both_apps(
    url: str, args: argparse.Namespace, variants: tuple[Variant, ...] = ()
) -> Iterator[tuple[int, ...]]:
    """The reference app and the service on `url`, with the same worker count and pool size,
    then each of `variants`; yields their ports in that order (reference, service, ...)."""
    ref_port = free_port()
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
    svc_env = {
        "DB_POOL_SIZE": str(args.pool),
        "DB_MAX_OVERFLOW": "0",
        "COALESCE_HOT_PATHS": "false" if getattr(args, "coalesce", "on") == "off" else "true",
    }
    with contextlib.ExitStack() as running:
        running.enter_context(process(ref_args, ref_port, ref_env))
        ports = [ref_port]
        for variant in (Variant("service"), *variants):
            ports.append(free_port())
            env = {**svc_env, **variant.env}
            running.enter_context(service(url, ports[-1], args.workers, env, cwd=variant.cwd))
        yield tuple(ports)


def load_average() -> str:
    """The box's 1, 5 and 15 minute load averages (other work competes for the cores)."""
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


# A backend publishes its counts at the end of a transaction at most once a second, and an
# idle one within 10 s (PostgreSQL's PGSTAT_IDLE_INTERVAL): a reading taken this long after
# the load stopped has every commit of the load in it.
STATS_SETTLE_S = 11.0


async def commits(url: str, settle: bool = False) -> int:
    """Transactions committed in the database so far (`pg_stat_database.xact_commit`);
    `settle`: first wait until every backend has published its counts."""
    if settle:
        await asyncio.sleep(STATS_SETTLE_S)
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("SELECT pg_stat_clear_snapshot()")
        value: int = await conn.fetchval(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
        )
        return value
    finally:
        await conn.close()


def batch_sizes(port: int) -> dict[str, dict[str, float]]:
    """The service's `coalesced_batch_size` histogram, per path: cumulative bucket counts by
    upper bound (`le`), plus `sum` and `count`."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    out: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        if family.name != "coalesced_batch_size":
            continue
        for sample in family.samples:
            kind = sample.name.rsplit("_", 1)[-1]  # bucket, sum, count (or created)
            if kind in ("bucket", "sum", "count"):
                key = sample.labels["le"] if kind == "bucket" else kind
                out.setdefault(sample.labels["path"], {})[key] = sample.value
    return out


def _side(cmdline: str) -> str | None:
    if "bench.reference_app" in cmdline:
        return "reference"
    if "-m app worker" in cmdline:
        return "worker"
    if "-m app serve" in cmdline:
        return "service"
    return None


def _group(proc: psutil.Process) -> str | None:
    """Which side of a run a process's CPU counts for: the apps' worker processes (spawned
    by multiprocessing) count for the app that started them."""
    try:
        if proc.name().startswith("postgres"):
            return "postgres"
        if proc.name() == "wrk":
            return "wrk"
        for each in (proc, *proc.parents()):
            side = _side(" ".join(each.cmdline()))
            if side is not None:
                return side
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None
    return None


def cpu_seconds() -> dict[tuple[str, int], float]:
    """CPU seconds (user + system) so far of the processes of a run, by side (postgres,
    the service, the reference app, the worker, wrk) and pid. Processes alive at both
    readings are what a difference counts: the apps' workers and the pools' backends live
    through a run; a total by side would go down when another process of that side ends
    meanwhile (another server's backend, an autovacuum worker)."""
    totals: dict[tuple[str, int], float] = {}
    for proc in psutil.process_iter():
        group = _group(proc)
        if group is None:
            continue
        try:
            times = proc.cpu_times()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        totals[group, proc.pid] = times.user + times.system
    return totals
