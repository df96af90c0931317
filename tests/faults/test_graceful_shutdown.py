"""Graceful shutdown: SIGTERM to the serve process while requests are in flight → every
accepted request completes, the process exits within its grace period, invariants hold."""

from __future__ import annotations

import asyncio
import signal
import time

import asyncpg
import httpx

from tests.faults.harness import (
    API,
    Cluster,
    Tally,
    check_invariants,
    seed_held_codes,
    seed_users,
    service,
)
from tests.helpers import lock_waiters, wait_for, wait_for_lock_waiters

CLIENTS = 12
WORKERS = 2
GRACE_S = 20  # uvicorn's timeout_graceful_shutdown in `app serve`
SERVICE = "couponflash"  # the service's application_name in pg_stat_activity
# Every request waits on the database, however the 2 workers share them out: each worker's
# hot-path pool (DB_POOL_SIZE, no overflow) holds all of them.
ENV = {"DB_LOCK_TIMEOUT_MS": "15000", "DB_POOL_SIZE": str(CLIENTS + 4)}


def _shutting_down(log: str) -> bool:
    """uvicorn has logged every worker's shutdown and a worker waiting for its connections."""
    return log.count("Shutting down") >= WORKERS and "Waiting for connections to close" in log


async def _late_request(base: str, late: Tally) -> None:
    async with httpx.AsyncClient(base_url=base, timeout=3) as fresh:
        try:
            late.record(await fresh.get("/healthz"))
        except httpx.TransportError as exc:
            late.record(exc)


async def test_sigterm_drains_in_flight_requests(cluster: Cluster, pg: asyncpg.Connection) -> None:
    users = await seed_users(pg, CLIENTS)
    codes = await seed_held_codes(pg, users)
    tally = Tally("graceful shutdown")
    late = Tally("graceful shutdown, new requests after SIGTERM")
    holder = await asyncpg.connect(cluster.url)
    with service(cluster, workers=WORKERS, env=ENV) as svc:
        async with httpx.AsyncClient(base_url=svc.base, timeout=60) as http:
            tx = holder.transaction()
            await tx.start()
            await holder.execute(
                "SELECT 1 FROM codes WHERE code = ANY($1) FOR UPDATE", list(codes.values())
            )
            try:
                in_flight = [
                    asyncio.create_task(
                        http.post(f"{API}/codes/{codes[u.id]}/redeem", json={}, headers=u.headers)
                    )
                    for u in users
                ]
                await wait_for_lock_waiters(pg, CLIENTS, application_name=SERVICE, timeout=20)
                svc.proc.send_signal(signal.SIGTERM)
                terminated = time.monotonic()
                # Every worker has begun its graceful shutdown (uvicorn logs both steps)
                # while the requests are still blocked in the database.
                await wait_for(
                    lambda: _shutting_down(svc.log_text()),
                    timeout=GRACE_S,
                    what="every worker shutting down and waiting for its connections",
                )
                # A connection opened after SIGTERM is not one of the accepted requests:
                # it is classified, not required to succeed.
                probe = asyncio.create_task(_late_request(svc.base, late))
                draining = {
                    "process alive": svc.proc.poll() is None,
                    "requests unanswered": sum(1 for t in in_flight if not t.done()),
                    "requests blocked": len(await lock_waiters(pg, application_name=SERVICE)),
                }
            finally:
                await tx.rollback()
            for outcome in await asyncio.gather(*in_flight, return_exceptions=True):
                tally.record(outcome)
            answered = time.monotonic() - terminated
            await probe
            exit_code = await asyncio.to_thread(svc.proc.wait, GRACE_S + 10)
            exited = time.monotonic() - terminated
        unhandled = svc.unhandled_errors()
    await holder.close()

    tally.report(
        answered_after_sigterm_s=f"{answered:.2f}",
        exited_after_sigterm_s=f"{exited:.2f}",
        exit_code=exit_code,
    )
    late.report()
    assert not unhandled, unhandled[:3]
    assert draining == {
        "process alive": True,
        "requests unanswered": CLIENTS,
        "requests blocked": CLIENTS,
    }, draining
    assert tally.ok == CLIENTS, (tally.statuses, tally.bad)
    assert exited <= GRACE_S + 5, exited
    assert exit_code == 0, exit_code
    redeemed = await pg.fetchval(
        "SELECT count(*) FROM codes WHERE code = ANY($1) AND status = 'redeemed'",
        list(codes.values()),
    )
    assert redeemed == CLIENTS
    await check_invariants(cluster.url)
