"""Lock timeout hit on purpose: another session holds a code's row while clients lock and
redeem it → 409 `busy` with Retry-After in bounded time; the same pool then serves
normally and leaves no connection idle in a transaction."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import httpx

from tests.faults.harness import (
    API,
    Cluster,
    Tally,
    check_invariants,
    has_retry_after,
    problem_slug,
    seed_held_codes,
    seed_users,
    service,
)

LOCK_TIMEOUT_MS = 1000
# PostgreSQL applies lock_timeout to each lock it waits for: a request queued behind
# another waiter first waits for the row's tuple lock, then for the holding transaction,
# so the bound is up to twice the timeout, plus scheduling.
MARGIN_S = LOCK_TIMEOUT_MS / 1000 + 0.5
CLIENTS = 8
POOL = 10


async def test_lock_timeout_answers_busy_and_pool_recovers(
    cluster: Cluster, pg: asyncpg.Connection
) -> None:
    (user,) = await seed_users(pg, 1)
    code = (await seed_held_codes(pg, [user]))[user.id]
    env = {
        "DB_LOCK_TIMEOUT_MS": str(LOCK_TIMEOUT_MS),
        "DB_POOL_SIZE": str(POOL),
        "DB_MAX_OVERFLOW": "0",
        "DB_POOL_TIMEOUT_S": "30",
    }
    tally = Tally("lock timeout")
    after = Tally("lock timeout, afterwards")
    holder = await asyncpg.connect(cluster.url)
    with service(cluster, workers=1, env=env) as svc:
        async with httpx.AsyncClient(base_url=svc.base, headers=user.headers, timeout=30) as http:

            async def attempt(i: int) -> tuple[httpx.Response, float]:
                action = "lock" if i % 2 else "redeem"
                started = time.monotonic()
                r = await http.post(f"{API}/codes/{code}/{action}", json={})
                return r, time.monotonic() - started

            await http.get(f"{API}/codes/{code}")  # warm the pool up
            tx = holder.transaction()
            await tx.start()
            await holder.execute("SELECT 1 FROM codes WHERE code = $1 FOR UPDATE", code)
            try:
                results = await asyncio.gather(*(attempt(i) for i in range(CLIENTS)))
            finally:
                await tx.rollback()
            for r, _ in results:
                tally.record(r)

            # The same pool (one process, POOL connections) serves normally afterwards.
            lock = await http.post(f"{API}/codes/{code}/lock", json={})
            after.record(lock)
            lock_id = lock.json().get("lock_id")
            after.record(await http.post(f"{API}/codes/{code}/redeem", json={"lock_id": lock_id}))
            for r in await asyncio.gather(
                *(http.get(f"{API}/codes/{code}") for _ in range(3 * POOL))
            ):
                after.record(r)
            stuck = await pg.fetch(
                "SELECT pid, state, query FROM pg_stat_activity"
                " WHERE application_name = 'couponflash' AND state LIKE 'idle in transaction%'"
            )
            connections = await pg.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'couponflash'"
            )
        unhandled = svc.unhandled_errors()
    await holder.close()

    waits = [elapsed for _, elapsed in results]
    tally.report(
        lock_timeout_ms=LOCK_TIMEOUT_MS,
        min_wait_s=f"{min(waits):.2f}",
        max_wait_s=f"{max(waits):.2f}",
        pool=POOL,
    )
    after.report(pool_connections=connections)
    assert not tally.bad and not after.bad, (tally.bad, after.bad)
    assert not unhandled, unhandled[:3]
    for r, elapsed in results:
        assert (r.status_code, problem_slug(r)) == (409, "busy"), r.text
        assert has_retry_after(r), r.headers
        assert LOCK_TIMEOUT_MS / 1000 * 0.9 <= elapsed <= LOCK_TIMEOUT_MS / 1000 + MARGIN_S
    assert after.ok == after.requests, after.statuses
    assert not stuck, stuck
    assert connections <= POOL
    status = await pg.fetchval("SELECT status FROM codes WHERE code = $1", code)
    assert status == "redeemed"
    await check_invariants(cluster.url)
