"""`make test-ha-smoke`, a step of `make test`: the topology of `make test-ha` (three
PostgreSQL 15 under Patroni, three etcd members, HAProxy, PgBouncer, three API instances,
one per way to the primary) under a small load, through one planned switchover and one
kill -9 of the primary's postmaster. After each, the unknown outcomes are settled with
their keys, `python -m app check` runs on the leader and the database is reconciled with
what the clients were told. Fails on any lost or doubled write, on two nodes able to
acknowledge a commit at the same instant, on any 5xx but 503, and when it runs past
`HA_SMOKE_TIMEOUT_S` (default 300); everything it started is stopped, and its data
deleted, however it ends."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time

import asyncpg
import httpx

from tests.faults.harness import seed_book, seed_held_codes, seed_promo, seed_users
from tests.ha.__main__ import (
    POLL_S,
    Faults,
    PrimaryWatch,
    Run,
    _leader,
    _path_table,
    _table,
    _until,
    drill,
    non_503_5xx,
)
from tests.ha.load import Load, reconcile
from tests.ha.topology import (
    Topology,
    api_proc,
    api_ready,
    create_and_migrate,
    pgbouncer_api_env,
    run_in_topology,
    start_database,
)

PER_KIND = 2  # clients per kind of write (assign, lock+redeem, reserve+purchase)
STEADY_OKS = 30  # acknowledged writes before the fault
AFTER_OKS = 20  # ... and after recovery
TIMEOUT_S = float(os.environ.get("HA_SMOKE_TIMEOUT_S", "300"))


async def run(topo: Topology) -> int:
    async with asyncio.timeout(TIMEOUT_S):
        return await _smoke(topo)


async def _smoke(topo: Topology) -> int:
    started = time.monotonic()
    await asyncio.to_thread(start_database, topo)
    await create_and_migrate(topo)
    pg = await asyncpg.connect(topo.proxy_url)
    try:
        users = await seed_users(pg, 3 * PER_KIND)
        book = await seed_book(pg, 10_000)
        held_by_id = await seed_held_codes(pg, users[PER_KIND : 2 * PER_KIND], uses=10_000_000)
        promo = await seed_promo(pg, 10_000)
    finally:
        await pg.close()
    held = {i: held_by_id[users[i].id] for i in range(PER_KIND, 2 * PER_KIND)}
    # The three ways to the primary, as in `make test-ha`: api1 through HAProxy, api2 with
    # the multi-host URL, api3 through PgBouncer in front of HAProxy.
    topo.start(api_proc(topo, 0, topo.proxy_url))
    topo.start(api_proc(topo, 1, topo.multi_host_url))
    topo.start(api_proc(topo, 2, topo.pgbouncer_url, pgbouncer_api_env(topo)))
    for port in topo.api_ports:
        await _until(f"API on {port}", lambda port=port: api_ready(port), 60)
    up = time.monotonic() - started
    print(f"[ha-smoke] topology up and seeded in {up:.1f} s", flush=True)

    async def connect() -> asyncpg.Connection:
        return await asyncpg.connect(topo.proxy_url)

    watch = PrimaryWatch(topo.nodes)
    watcher = asyncio.create_task(watch.run())
    runs: list[Run] = []
    failures: list[str] = []
    async with httpx.AsyncClient(base_url=topo.api_base, timeout=30) as http:
        load = Load(http, users, book, held, promo)
        faults = Faults(topo, connect, [], load)
        clients = load.start(PER_KIND)
        try:
            for name, inject in (
                ("switchover", faults.switchover),
                ("kill -9 postgres", faults.kill_postgres),
            ):
                run_, failure = await drill(topo, load, name, inject, STEADY_OKS, AFTER_OKS)
                runs.append(run_)
                if failure:
                    failures.append(failure)
                load.resume()
        finally:
            load.stop()
            await asyncio.gather(*clients, return_exceptions=True)
            if watcher.done():
                watcher.result()  # the poller must not have died: raise what killed it
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        ledger = await reconcile(_leader(topo).url, load)
    five_xx = non_503_5xx(topo, load)
    _table(runs)
    _path_table(runs)
    two_ms = int(watch.two_primaries * POLL_S * 1000)
    for line in failures + load.bad[:10]:
        print(f"[ha-smoke] FAIL {line}", flush=True)
    max_outage = max((r.outage_s for r in runs), default=0.0)
    print(
        f"ha-smoke: faults {len(runs)}, acknowledged {ledger.acknowledged},"
        f" lost {len(ledger.lost)}, duplicated {len(ledger.duplicated)},"
        f" two-primaries {two_ms} ms, max write outage {max_outage:.1f} s,"
        f" non-503 5xx {five_xx}; {time.monotonic() - started:.0f} s in all"
        f" (load average {os.getloadavg()[0]:.1f})",
        flush=True,
    )
    ok = not (failures or ledger.lost or ledger.duplicated or two_ms or five_xx)
    return 0 if ok and len(runs) == 2 else 1


def main() -> int:
    return run_in_topology(run, prefix="cf-ha-smoke-", api_instances=3, with_pgbouncer=True)


if __name__ == "__main__":
    sys.exit(main())
