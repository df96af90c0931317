"""Pool exhaustion: two connections, no overflow, a one-second pool timeout, and many
requests that wait on rows another session holds → some 503 `unavailable` with
Retry-After, never a 500; normal service once the load drops."""

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

CLIENTS = 24
ROUNDS = 2
ENV = {
    "DB_POOL_SIZE": "2",
    "DB_MAX_OVERFLOW": "0",
    "DB_POOL_TIMEOUT_S": "1",
    "DB_LOCK_TIMEOUT_MS": "3000",
}
ALLOWED = {(503, "unavailable"), (409, "busy")}


async def test_pool_exhaustion_answers_503_and_recovers(
    cluster: Cluster, pg: asyncpg.Connection
) -> None:
    users = await seed_users(pg, CLIENTS)
    codes = await seed_held_codes(pg, users)
    tally = Tally("pool exhaustion")
    after = Tally("pool exhaustion, afterwards")
    holder = await asyncpg.connect(cluster.url)
    with service(cluster, workers=1, env=ENV) as svc:
        async with httpx.AsyncClient(base_url=svc.base, timeout=30) as http:

            async def redeem(i: int) -> httpx.Response | BaseException:
                user = users[i]
                try:
                    return await http.post(
                        f"{API}/codes/{codes[user.id]}/redeem", json={}, headers=user.headers
                    )
                except httpx.TransportError as exc:
                    return exc

            tx = holder.transaction()
            await tx.start()
            await holder.execute(
                "SELECT 1 FROM codes WHERE code = ANY($1) FOR UPDATE", list(codes.values())
            )
            started = time.monotonic()
            try:
                answers = []
                for _ in range(ROUNDS):
                    answers += await asyncio.gather(*(redeem(i) for i in range(CLIENTS)))
            finally:
                await tx.rollback()
            loaded_s = time.monotonic() - started
            for a in answers:
                tally.record(a)

            # Load dropped: every client redeems its code, a few at a time.
            recovered = time.monotonic()
            for batch in range(0, CLIENTS, 2):
                for a in await asyncio.gather(*(redeem(i) for i in range(batch, batch + 2))):
                    after.record(a)
            recovery_s = time.monotonic() - recovered
        unhandled = svc.unhandled_errors()
    await holder.close()

    tally.report(pool=2, overflow=0, pool_timeout_s=1, loaded_s=f"{loaded_s:.1f}")
    after.report(recovery_s=f"{recovery_s:.2f}")
    assert not tally.bad and not after.bad, (tally.bad, after.bad)
    assert not unhandled, unhandled[:3]
    assert tally.unknown == 0, tally.statuses
    shed = [a for a in answers if isinstance(a, httpx.Response) and a.status_code == 503]
    assert shed, f"the pool never ran out: {tally.statuses}"
    for a in answers:
        assert isinstance(a, httpx.Response)
        assert (a.status_code, problem_slug(a)) in ALLOWED, a.text
        assert has_retry_after(a), a.headers
    assert after.ok == CLIENTS, after.statuses
    redeemed = await pg.fetchval(
        "SELECT count(*) FROM codes WHERE code = ANY($1) AND status = 'redeemed'",
        list(codes.values()),
    )
    assert redeemed == CLIENTS
    await check_invariants(cluster.url)
