"""The server's own limits under load: a small `statement_timeout` that statements exceed
because another session holds their rows or table (`lock_timeout` is larger) → 503 with
Retry-After in bounded time and a healthy pool afterwards; and a cluster started with a
small `max_connections`, with other sessions hogging every slot and then with the
service's pools (2 workers) wanting more connections than the server allows → 503 with
Retry-After, never a 500, and recovery when the load goes away."""

from __future__ import annotations

import asyncio
import time
import uuid

import asyncpg
import httpx

from tests.faults.harness import (
    API,
    Cluster,
    Service,
    Tally,
    User,
    check_invariants,
    has_retry_after,
    problem_slug,
    seed_book,
    seed_held_codes,
    seed_promo,
    seed_users,
    service,
)

STATEMENT_TIMEOUT_MS = 500
TIMEOUT_S = STATEMENT_TIMEOUT_MS / 1000
BLOCKED = 8  # clients whose statements wait for the holder
FREE = 6  # clients whose statements never wait
HOLD_S = 2.5
POOL = 16  # more than all clients: no request waits for a connection
# The request's other statements, a rollback and scheduling on a busy box.
MARGIN_S = 1.5

MAX_CONNECTIONS = 20
HOG_S = 1.5
LIMIT_ENV = {
    # 24 connections per worker: however the requests spread over the 2 workers, the
    # pools want more than the server's 20 slots.
    "DB_POOL_SIZE": "24",
    "DB_MAX_OVERFLOW": "0",
    "DB_POOL_TIMEOUT_S": "2",
    "DB_LOCK_TIMEOUT_MS": "1500",
}
LOADED = 24  # clients waiting on locked rows while the pools grow
RECOVERY_S = 5.0
AFTER_TRIES = 20
AWAY = {(503, "unavailable"), (409, "busy")}


async def _post(http: httpx.AsyncClient, path: str, user: User) -> httpx.Response | Exception:
    try:
        return await http.post(path, json={}, headers=user.headers)
    except httpx.TransportError as exc:
        return exc


async def _pool_state(pg: asyncpg.Connection) -> tuple[int, list[asyncpg.Record]]:
    """(the service's connections, those not simply idle: in a transaction or still
    running a statement with no request in flight)."""
    connections: int = await pg.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'couponflash'"
    )
    busy = await pg.fetch(
        "SELECT pid, state, query FROM pg_stat_activity"
        " WHERE application_name = 'couponflash' AND state <> 'idle'"
    )
    return connections, busy


async def test_statement_timeout_answers_503_in_bounded_time(
    cluster: Cluster, pg: asyncpg.Connection
) -> None:
    users = await seed_users(pg, BLOCKED + FREE)
    blocked, free = users[:BLOCKED], users[BLOCKED:]
    codes = await seed_held_codes(pg, blocked)
    book = await seed_book(pg, 10_000)
    promo = await seed_promo(pg, 1_000)
    env = {
        "DB_STATEMENT_TIMEOUT_MS": str(STATEMENT_TIMEOUT_MS),
        "DB_LOCK_TIMEOUT_MS": "10000",  # larger: the statement timeout fires first
        "DB_POOL_SIZE": str(POOL),
        "DB_MAX_OVERFLOW": "0",
        "DB_POOL_TIMEOUT_S": "10",
    }
    tally = Tally("statement timeout")
    load = Tally("statement timeout, unblocked load meanwhile")
    after = Tally("statement timeout, afterwards")
    holder = await asyncpg.connect(cluster.url)
    with service(cluster, workers=1, env=env) as svc:
        async with httpx.AsyncClient(base_url=svc.base, timeout=30) as http:
            # Half the blocked clients redeem codes whose rows are held, half reserve on a
            # promo whose units table is locked; the free ones assign codes meanwhile.
            def blocked_path(i: int) -> str:
                if i % 2:
                    return f"{API}/promos/{promo}/reserve"
                return f"{API}/codes/{codes[blocked[i].id]}/redeem"

            answers: list[tuple[httpx.Response | Exception, float]] = []

            async def wait_blocked(i: int, stop: float) -> None:
                while time.monotonic() < stop:
                    started = time.monotonic()
                    r = await _post(http, blocked_path(i), blocked[i])
                    answers.append((r, time.monotonic() - started))

            async def assign(user: User, stop: float) -> None:
                while time.monotonic() < stop:
                    load.record(await _post(http, f"{API}/books/{book}/assign", user))

            tx = holder.transaction()
            await tx.start()
            await holder.execute(
                "SELECT 1 FROM codes WHERE code = ANY($1) FOR UPDATE", list(codes.values())
            )
            await holder.execute("LOCK TABLE promo_units IN EXCLUSIVE MODE")
            stop = time.monotonic() + HOLD_S
            try:
                await asyncio.gather(
                    *(wait_blocked(i, stop) for i in range(BLOCKED)),
                    *(assign(u, stop) for u in free),
                )
            finally:
                await tx.rollback()
            for r, _ in answers:
                tally.record(r)

            # The same pool serves normally afterwards: every blocked client gets through.
            for r in await asyncio.gather(
                *(_post(http, blocked_path(i), blocked[i]) for i in range(BLOCKED)),
                *(_post(http, f"{API}/books/{book}/assign", u) for u in free),
            ):
                after.record(r)
            connections, busy = await _pool_state(pg)
        unhandled = svc.unhandled_errors()
        states = svc.mapped_sqlstates()
    await holder.close()

    waits = [elapsed for _, elapsed in answers]
    tally.report(
        statement_timeout_ms=STATEMENT_TIMEOUT_MS,
        min_wait_s=f"{min(waits):.2f}",
        max_wait_s=f"{max(waits):.2f}",
        sqlstates=dict(states),
    )
    load.report()
    after.report(pool_connections=connections)
    assert not tally.bad and not load.bad and not after.bad, (tally.bad, load.bad, after.bad)
    assert not unhandled, unhandled[:3]
    for r, elapsed in answers:
        assert isinstance(r, httpx.Response), r
        assert (r.status_code, problem_slug(r)) == (503, "unavailable"), r.text
        assert has_retry_after(r), r.headers
        assert TIMEOUT_S * 0.9 <= elapsed <= TIMEOUT_S + MARGIN_S, elapsed
    assert set(states) == {"57014"} and states["57014"] >= len(answers), states
    assert load.ok, load.statuses
    assert after.ok == after.requests, after.statuses
    assert not busy, busy
    redeemed = await pg.fetchval(
        "SELECT count(*) FROM codes WHERE code = ANY($1) AND status = 'redeemed'",
        list(codes.values()),
    )
    assert redeemed == BLOCKED // 2
    await check_invariants(cluster.url)


async def _hog(url: str) -> list[asyncpg.Connection]:
    """Connections until the server refuses one (too_many_connections)."""
    hogs: list[asyncpg.Connection] = []
    while True:
        try:
            hogs.append(await asyncpg.connect(url))
        except asyncpg.TooManyConnectionsError:
            return hogs
        assert len(hogs) <= MAX_CONNECTIONS, "max_connections is not in effect"


async def _assign_until(
    svc: Service, users: list[User], book: uuid.UUID, tally: Tally, stop: float
) -> list[tuple[float, httpx.Response | Exception]]:
    """Every user assigns in a loop until `stop`, pausing 0.1 s after a failure; returns
    (monotonic time answered, outcome) of every request."""
    seen: list[tuple[float, httpx.Response | Exception]] = []
    async with httpx.AsyncClient(base_url=svc.base, timeout=30) as http:

        async def one(user: User) -> None:
            while time.monotonic() < stop:
                r = await _post(http, f"{API}/books/{book}/assign", user)
                seen.append((time.monotonic(), r))
                if tally.record(r) != "ok":
                    await asyncio.sleep(0.1)

        await asyncio.gather(*(one(u) for u in users))
    return seen


async def test_max_connections_answers_503_and_recovers(cluster: Cluster) -> None:
    await cluster.restart_with(max_connections=MAX_CONNECTIONS)
    try:
        await _max_connections(cluster)
    finally:
        await cluster.restart_with(max_connections=None)


async def _max_connections(cluster: Cluster) -> None:
    pg = await asyncpg.connect(cluster.url)
    users = await seed_users(pg, LOADED)
    codes = await seed_held_codes(pg, users)
    book = await seed_book(pg, 20_000)
    limit = await pg.fetchval("SHOW max_connections")
    hogged = Tally("max_connections, every slot hogged")
    recovered = Tally("max_connections, hogs gone")
    loaded = Tally("max_connections, pools wanting more than the server allows")
    after = Tally("max_connections, afterwards")
    with service(cluster, workers=2, env=LIMIT_ENV) as svc:
        # 1. Other sessions hold every slot while clients keep assigning; then they leave.
        hogs = await _hog(cluster.url)
        hog_count = len(hogs) + 1  # and `pg`
        started = time.monotonic()
        during = asyncio.create_task(_assign_until(svc, users[:16], book, hogged, started + HOG_S))
        await asyncio.sleep(HOG_S)
        refused = [r for _, r in await during]
        released = time.monotonic()
        await asyncio.gather(*(h.close() for h in hogs))
        seen = await _assign_until(svc, users[:16], book, recovered, released + HOG_S)
        oks = [t for t, r in seen if isinstance(r, httpx.Response) and r.status_code == 201]
        recovery_s = min(oks) - released if oks else None
        states_hogged = svc.mapped_sqlstates()

        # 2. Requests that wait on rows held elsewhere keep their connections, so the pools
        # grow past the server's limit; assigns go on meanwhile.
        holder = await asyncpg.connect(cluster.url)
        tx = holder.transaction()
        await tx.start()
        await holder.execute(
            "SELECT 1 FROM codes WHERE code = ANY($1) FOR UPDATE", list(codes.values())
        )
        peak = 0
        try:
            async with httpx.AsyncClient(base_url=svc.base, timeout=30) as http:
                waiting = [
                    asyncio.create_task(_post(http, f"{API}/codes/{codes[u.id]}/redeem", u))
                    for u in users
                ]
                assigning = asyncio.create_task(
                    _assign_until(svc, users[:8], book, loaded, time.monotonic() + 2.0)
                )
                while not all(t.done() for t in waiting):
                    peak = max(
                        peak,
                        await pg.fetchval(
                            "SELECT count(*) FROM pg_stat_activity"
                            " WHERE application_name = 'couponflash'"
                        ),
                    )
                    await asyncio.sleep(0.05)
                answers = await asyncio.gather(*waiting)
                for r in answers:
                    loaded.record(r)
                await assigning
        finally:
            await tx.rollback()
            await holder.close()
        states_all = svc.mapped_sqlstates()

        # 3. Load gone: every waiting client redeems, one at a time. The pools keep the
        # connections they grew, so all the server's slots may now sit idle in one worker's
        # pool while the other needs one: that worker still answers 503 (never 500). Each
        # try is a new connection, which either worker may take.
        redeemed: set[uuid.UUID] = set()
        for u in users:
            for _ in range(AFTER_TRIES):
                async with httpx.AsyncClient(base_url=svc.base, timeout=30) as http:
                    r = await _post(http, f"{API}/codes/{codes[u.id]}/redeem", u)
                if after.record(r) == "ok":
                    redeemed.add(u.id)
                    break
                refused.append(r)
                await asyncio.sleep(0.1)
        connections, busy = await _pool_state(pg)
        states_after = svc.mapped_sqlstates() - states_all
        unhandled = svc.unhandled_errors()

    hogged.report(max_connections=limit, hog_sessions=hog_count, sqlstates=dict(states_hogged))
    recovered.report(recovery_s=f"{recovery_s:.2f}" if recovery_s is not None else None)
    loaded.report(peak_connections=peak, sqlstates=dict(states_all - states_hogged))
    after.report(pool_connections=connections, sqlstates=dict(states_after))
    tallies = (hogged, recovered, loaded, after)
    assert not [b for t in tallies for b in t.bad], [t.bad[:3] for t in tallies]
    assert not unhandled, unhandled[:3]
    assert int(limit) == MAX_CONNECTIONS
    assert hogged.ok == 0 and hogged.definite > 0, hogged.statuses
    assert states_hogged["53300"] > 0, states_hogged  # the rest: no connection in time
    assert recovery_s is not None and recovery_s <= RECOVERY_S, recovery_s
    assert (states_all - states_hogged)["53300"] > 0, "the pools never met max_connections"
    assert len(redeemed) == LOADED, after.statuses
    for r in [*answers, *refused]:
        assert isinstance(r, httpx.Response), r
        assert (r.status_code, problem_slug(r)) in AWAY, r.text
        assert has_retry_after(r), r.headers
    assert not busy, busy
    in_db = await pg.fetchval(
        "SELECT count(*) FROM codes WHERE code = ANY($1) AND status = 'redeemed'",
        list(codes.values()),
    )
    assert in_db == LOADED
    await pg.close()
    await check_invariants(cluster.url)
