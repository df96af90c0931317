"""Import-job benchmark: a 10,000,000-line CSV uploaded to `POST /books/{id}/imports` and
run by a worker process while the same book serves assigns.

Starts `python -m app serve` (its in-process worker off) and `python -m app worker`
against a throwaway database, fills a book with codes to assign, measures assign latency on
that book while idle, then uploads the big file and measures: the request's wall time to the
202, the job's time from the 202 to `done`, the API's and the worker's peak RSS, and the
assign latency on the same book during the job. Results go to the "Import jobs" section of
docs/benchmarks.md, with the load average of the (shared) box.

    python bench/import_jobs.py [--lines 10000000] [--no-write]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.core.db import libpq_url
from bench.common import (
    RssSampler,
    free_port,
    machine,
    service,
    throwaway_database,
    worker,
    write_section,
)

ADMIN_EMAIL = "bench-admin@example.com"
ADMIN_PASSWORD = "bench-password-123"  # a throwaway local account
GOAL_202_S = 30.0
GOAL_DONE_S = 150.0
GOAL_MB = 300.0
SEED_CODES = 200_000  # free codes the assigns take, idle and during the import
ASSIGNERS = 2  # concurrent assign loops (the client shares the two cores too)
IDLE_S = 15.0


def write_csv(path: Path, lines: int) -> None:
    tag = uuid.uuid4().hex[:4].upper()
    with path.open("w") as fh:
        fh.write("code\n")
        step = 1_000_000
        for start in range(0, lines, step):
            fh.write("".join(f"J{tag}{i:08d}\n" for i in range(start, min(start + step, lines))))


def _chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            yield chunk


@dataclass
class Latencies:
    samples: list[float] = field(default_factory=list)
    errors: int = 0
    # (answered at, code) of assigns answered with a code not seeded before the import
    unseeded: list[float] = field(default_factory=list)

    def pct(self, p: float) -> float:
        if not self.samples:
            return float("nan")
        ordered = sorted(self.samples)
        return ordered[min(len(ordered) - 1, int(len(ordered) * p))] * 1000


async def assign_load(base: str, token: str, book_id: str, user_id: str, done: Any) -> Latencies:
    """ASSIGNERS loops of admin assigns to one user on the book until `done()` is true."""
    out = Latencies()
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:

        async def loop() -> None:
            while not done():
                started = time.perf_counter()
                resp = await client.post(
                    f"/api/v1/books/{book_id}/assign", json={"user_id": user_id}, headers=headers
                )
                if resp.status_code == 201:
                    out.samples.append(time.perf_counter() - started)
                    if not resp.json()["code"].startswith("SEED"):
                        out.unseeded.append(time.time())
                else:
                    out.errors += 1

        await asyncio.gather(*(loop() for _ in range(ASSIGNERS)))
    return out


# What the import's backend costs the box apart from its locks and WAL: one PostgreSQL
# backend on a core (an endless PL/pgSQL loop, cut by its statement timeout).
BUSY_SQL = "DO $$ BEGIN LOOP PERFORM 1; END LOOP; END $$"


async def busy_core(url: str, seconds: float) -> None:
    conn = await asyncpg.connect(libpq_url(url))
    try:
        await conn.execute(f"SET statement_timeout = {int(seconds * 1000)}")
        with contextlib.suppress(asyncpg.QueryCanceledError):
            await conn.execute(BUSY_SQL)
    finally:
        await conn.close()


async def assigns_beside_busy_core(
    base: str, token: str, book_id: str, user_id: str, url: str
) -> Latencies:
    state = {"done": False}

    async def hog() -> None:
        await busy_core(url, IDLE_S)
        state["done"] = True

    latencies, _ = await asyncio.gather(
        assign_load(base, token, book_id, user_id, lambda: state["done"]), hog()
    )
    return latencies


@dataclass
class Result:
    lines: int
    file_mb: float
    to_202_s: float
    job_s: float
    to_insert_s: float  # 202 to the first poll that saw `inserting` (validation included)
    job: dict[str, Any]
    api_mb: float
    worker_mb: float
    idle: Latencies
    busy: Latencies
    during: Latencies
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float]


def bench(lines: int) -> Result:
    tmp = Path(tempfile.mkdtemp(prefix="cf-bench-jobs-"))
    big = tmp / "codes.csv"
    print(f"writing a {lines:,}-line CSV in {tmp}")
    write_csv(big, lines)
    file_mb = big.stat().st_size / 1_048_576
    env = {
        "ADMIN_EMAIL": ADMIN_EMAIL,
        "ADMIN_PASSWORD": ADMIN_PASSWORD,
        "DATA_DIR": str(tmp / "data"),
        "ENV": "dev",
        "MAX_UPLOAD_BYTES": str(1 << 30),
    }
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    load_before = os.getloadavg()
    try:
        with (
            throwaway_database("bench-jobs") as url,
            service(url, port, 1, env, health="/readyz") as server,
            httpx.Client(base_url=base, timeout=600) as client,
            worker(url, env) as jobs,
        ):
            return _run(client, base, url, server.pid, jobs.pid, big, lines, file_mb, load_before)
    finally:
        big.unlink(missing_ok=True)


def _run(
    client: httpx.Client,
    base: str,
    url: str,
    api_pid: int,
    worker_pid: int,
    big: Path,
    lines: int,
    file_mb: float,
    load_before: tuple[float, float, float],
) -> Result:
    token = client.post(
        "/api/v1/auth/token", data={"username": ADMIN_EMAIL, "password": ADMIN_PASSWORD}
    ).json()["access_token"]
    auth = {"Authorization": f"Bearer {token}"}
    book = client.post(
        "/api/v1/books", json={"name": "bench-jobs", "max_codes_per_user": None}, headers=auth
    ).json()
    seed = "code\n" + "".join(f"SEED{i:08d}\n" for i in range(SEED_CODES))
    resp = client.post(
        f"/api/v1/books/{book['id']}/codes",
        content=seed.encode(),
        headers={**auth, "Content-Type": "text/csv"},
    )
    assert resp.status_code == 201, resp.text
    me = client.get("/api/v1/auth/me", headers=auth).json()
    user_id = me["id"]

    deadline = time.monotonic() + IDLE_S
    idle = asyncio.run(
        assign_load(base, token, book["id"], user_id, lambda: time.monotonic() > deadline)
    )
    print(f"idle assigns: {len(idle.samples)}, p99 {idle.pct(0.99):.1f} ms")
    busy = asyncio.run(assigns_beside_busy_core(base, token, book["id"], user_id, url))
    print(f"assigns beside a busy core: {len(busy.samples)}, p99 {busy.pct(0.99):.1f} ms")

    with RssSampler(api_pid, 0.05) as api_rss, RssSampler(worker_pid, 0.05) as worker_rss:
        started = time.perf_counter()
        resp = client.post(
            f"/api/v1/books/{book['id']}/imports",
            content=_chunks(big),
            headers={**auth, "Content-Type": "text/csv"},
        )
        to_202 = time.perf_counter() - started
        assert resp.status_code == 202, resp.text
        job_id = resp.json()["id"]
        print(f"202 after {to_202:.1f} s")
        accepted = time.perf_counter()
        state: dict[str, Any] = {"job": resp.json()}

        def finished() -> bool:
            return state["job"]["state"] in ("done", "failed", "cancelled")

        async def watch() -> None:
            async with httpx.AsyncClient(base_url=base, timeout=30) as watcher:
                while not finished():
                    await asyncio.sleep(0.5)
                    got = await watcher.get(f"/api/v1/imports/{job_id}", headers=auth)
                    state["job"] = got.json()
                    state["at"] = time.perf_counter()
                    seen = state["job"]["state"] in ("inserting", "done")
                    if seen and "inserting_at" not in state:
                        state["inserting_at"] = state["at"]

        async def both() -> Latencies:
            during, _ = await asyncio.gather(
                assign_load(base, token, book["id"], user_id, finished), watch()
            )
            return during

        during = asyncio.run(both())
        job_s = state["at"] - accepted
        to_insert_s = state.get("inserting_at", state["at"]) - accepted
    job = state["job"]
    print(f"job {job['state']} after {job_s:.1f} s: {job}")
    assert job["state"] == "done" and job["inserted"] == lines, job
    # An assign answered before the job's final step (same clock: same box) cannot have seen
    # its codes; afterwards it may.
    finished_at = datetime.fromisoformat(job["finished_at"]).timestamp()
    early = sum(at < finished_at for at in during.unseeded)
    assert early == 0, f"{early} assigns returned a code of the unfinished job"
    return Result(
        lines,
        file_mb,
        to_202,
        job_s,
        to_insert_s,
        job,
        api_rss.peak_mb,
        worker_rss.peak_mb,
        idle,
        busy,
        during,
        load_before,
        os.getloadavg(),
    )


def summary(r: Result) -> str:
    meets = (
        r.to_202_s <= GOAL_202_S
        and r.job_s <= GOAL_DONE_S
        and r.api_mb <= GOAL_MB
        and r.worker_mb <= GOAL_MB
    )
    ratio = r.during.pct(0.99) / r.idle.pct(0.99)
    busy_ratio = r.during.pct(0.99) / r.busy.pct(0.99)
    load = ", ".join(f"{x:.1f}" for x in r.load_before)
    load_after = ", ".join(f"{x:.1f}" for x in r.load_after)
    return "\n".join(
        [
            f"`make bench-import` on {datetime.now(UTC):%Y-%m-%d}, {machine()}; PostgreSQL,"
            " the API (one uvicorn worker, `RUN_WORKER=false`), one `python -m app worker`"
            " and the client share the box, which other work was using too: load average"
            f" {load} (1, 5, 15 min) before the run, {load_after} after. One run.",
            "",
            f"A {r.lines:,}-line CSV ({r.file_mb:.0f} MB) streamed to"
            " `POST /api/v1/books/{id}/imports`; the worker imports it into a book that"
            f" already holds {SEED_CODES:,} free codes, while {ASSIGNERS} client loops assign"
            " codes of that same book. Goals: request to 202 <= 30 s, job done <= 150 s, API"
            f" and worker RSS <= 300 MB ({'all met' if meets else 'not all met'}).",
            "",
            "| measure | result |",
            "|---|---:|",
            f"| request to 202 (file stored) | {r.to_202_s:.1f} s |",
            f"| 202 to job `done` (polled every 0.5 s) | {r.job_s:.1f} s |",
            "| of which waiting and validating (202 to `inserting` seen) |"
            f" {r.to_insert_s:.1f} s |",
            f"| codes inserted | {r.job['inserted']:,} |",
            f"| API peak RSS (process tree) | {r.api_mb:.0f} MB |",
            f"| worker peak RSS | {r.worker_mb:.0f} MB |",
            f"| assign p50 / p99, book idle | {r.idle.pct(0.5):.1f} / {r.idle.pct(0.99):.1f}"
            f" ms ({len(r.idle.samples):,} assigns, {r.idle.errors} errors) |",
            f"| assign p50 / p99, during the import | {r.during.pct(0.5):.1f} /"
            f" {r.during.pct(0.99):.1f} ms ({len(r.during.samples):,} assigns,"
            f" {r.during.errors} errors) |",
            f"| assign p50 / p99, book idle, one core busy ({IDLE_S:.0f} s of a PL/pgSQL"
            f" loop) | {r.busy.pct(0.5):.1f} / {r.busy.pct(0.99):.1f} ms"
            f" ({len(r.busy.samples):,} assigns, {r.busy.errors} errors) |",
            f"| p99 during / idle | {ratio:.2f}x |",
            f"| p99 during / one core busy | {busy_ratio:.2f}x |",
            "",
            "No assign during the job returned one of its codes: they are inserted in one"
            " transaction (batches of `IMPORT_BATCH_SIZE`, progress published from a second"
            " connection) and become visible with the job's `done` at its commit.",
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--lines", type=int, default=10_000_000)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    result = bench(args.lines)
    print(summary(result))
    if not args.no_write:
        write_section("Import jobs", summary(result))


if __name__ == "__main__":
    main()
