"""An API worker killed with SIGKILL mid-load; clients that lost their answer retry with the
same `Idempotency-Key` and get the stored result or a fresh single effect. A kill counts
only when it cut requests in flight (a client saw its connection lost); one that cut none
is tried again, a bounded number of times."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx
import psutil

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
    seed_promo,
    seed_users,
    service,
    wait_replaced,
)
from tests.helpers import wait_for

CLIENTS = 16
WORKERS = 2
KILLS = 2  # kills that must cut requests in flight
ATTEMPTS = 6  # kills tried at most to get there
STEADY = 8 * CLIENTS  # answers seen before each kill
CUT_S = 5.0  # a kill that cut a request shows as a lost connection within this
RESOLVE_S = 40.0
# Answers after which the same key is tried again (the first attempt's fate is not known
# or the key is still taken by a transaction the kill has not yet ended).
RETRY = {(503, "unavailable"), (409, "busy"), (409, "idempotency-key-in-use")}


@dataclass
class Ops:
    """What one client was told, per key."""

    codes: dict[str, str] = field(default_factory=dict)  # assign key -> code
    reserved: dict[str, uuid.UUID] = field(default_factory=dict)  # reserve key -> reservation
    purchased: dict[str, uuid.UUID] = field(default_factory=dict)  # purchase key -> reservation
    unresolved: list[str] = field(default_factory=list)
    retried: int = 0
    replayed_after_loss: int = 0  # stored result served after a lost answer
    fresh_after_loss: int = 0  # first effect made by the retry
    mismatched: list[str] = field(default_factory=list)


async def _once(
    http: httpx.AsyncClient, path: str, key: str, tally: Tally, ops: Ops
) -> httpx.Response | None:
    """Send until the answer is definite; None if it never became so in time."""
    lost = False
    first: Any = None
    deadline = time.monotonic() + RESOLVE_S
    while True:
        try:
            r = await http.post(path, json={}, headers={"Idempotency-Key": key})
        except httpx.TransportError as exc:
            tally.record(exc)
            lost = True
        else:
            tally.record(r)
            if (r.status_code, problem_slug(r)) not in RETRY:
                if r.status_code < 300:
                    body = r.json()
                    if first is not None and first != body.get("id"):
                        ops.mismatched.append(key)
                    if lost:
                        if r.headers.get("idempotent-replayed") == "true":
                            ops.replayed_after_loss += 1
                        else:
                            ops.fresh_after_loss += 1
                return r
            assert has_retry_after(r), r.headers
        if time.monotonic() > deadline:
            ops.unresolved.append(key)
            return None
        ops.retried += 1
        await asyncio.sleep(0.1)


async def _client(
    base: str, user: User, book: uuid.UUID, promo: uuid.UUID, tally: Tally, done: asyncio.Event
) -> Ops:
    ops = Ops()
    async with httpx.AsyncClient(base_url=base, headers=user.headers, timeout=10) as http:
        turn = 0
        while not done.is_set():
            turn += 1
            key = f"k-{uuid.uuid4().hex}"
            if turn % 2:
                r = await _once(http, f"{API}/books/{book}/assign", key, tally, ops)
                if r is not None and r.status_code == 201:
                    ops.codes[key] = r.json()["code"]
                continue
            r = await _once(http, f"{API}/promos/{promo}/reserve", key, tally, ops)
            if r is None or r.status_code not in (200, 201):
                continue
            reservation = uuid.UUID(r.json()["id"])
            ops.reserved[key] = reservation
            key = f"k-{uuid.uuid4().hex}"
            path = f"{API}/reservations/{reservation}/purchase"
            r = await _once(http, path, key, tally, ops)
            if r is not None and r.status_code == 200:
                ops.purchased[key] = reservation
    return ops


async def _more_answers(tally: Tally, n: int, what: str) -> None:
    """Wait until the clients have had `n` more ok answers."""
    target = tally.ok + n
    await wait_for(lambda: tally.ok >= target, timeout=60, what=what)


@dataclass
class Kill:
    """One SIGKILL: the worker, what it was serving then, and how many clients lost a
    connection because of it (`cut`; the kill landed mid-load when it is above zero)."""

    pid: int
    connections: int
    busy_backends: int
    cut: int = 0


def _client_connections(svc: Service, worker: psutil.Process) -> int:
    """Clients' connections the worker holds open (established on the service's port)."""
    with contextlib.suppress(psutil.Error):
        return sum(
            1
            for c in worker.net_connections(kind="tcp")
            if c.laddr and c.laddr.port == svc.port and c.status == psutil.CONN_ESTABLISHED
        )
    return 0


async def _busy_backends(pg: asyncpg.Connection) -> int:
    """The service's database sessions running a statement or inside a transaction."""
    n: int = await pg.fetchval(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE application_name = 'couponflash' AND state <> 'idle'"
    )
    return n


async def _kill_in_flight(svc: Service, pg: asyncpg.Connection, tally: Tally) -> Kill:
    """SIGKILL the worker holding the most client connections at a moment the service has
    requests in the database, then wait (bounded) for a client to see its connection cut."""

    async def in_flight() -> tuple[psutil.Process, int, int] | None:
        served = [(_client_connections(svc, w), w) for w in svc.workers()]
        if not served:
            return None
        connections, victim = max(served, key=lambda s: s[0])
        busy = await _busy_backends(pg)
        return (victim, connections, busy) if connections and busy else None

    victim, connections, busy = await wait_for(
        in_flight, timeout=30, every=0.01, what="requests in flight on a worker"
    )
    before = tally.unknown
    os.kill(victim.pid, signal.SIGKILL)
    kill = Kill(victim.pid, connections, busy)
    with contextlib.suppress(AssertionError):
        await wait_for(lambda: tally.unknown > before, timeout=CUT_S)
    kill.cut = tally.unknown - before
    return kill


async def _kill_until_landed(svc: Service, pg: asyncpg.Connection, tally: Tally) -> list[Kill]:
    """Kill workers under load until KILLS kills have cut requests in flight or ATTEMPTS
    kills were tried; each replaced (and started) before the next."""
    kills: list[Kill] = []
    while len(kills) < ATTEMPTS and sum(1 for k in kills if k.cut) < KILLS:
        # Steady load first (not the burst of reconnections after the previous kill).
        await _more_answers(tally, STEADY, "steady load")
        started = svc.startups()
        kills.append(await _kill_in_flight(svc, pg, tally))
        await asyncio.to_thread(wait_replaced, svc, {kills[-1].pid}, WORKERS, started)
    return kills


async def test_worker_sigkill_and_idempotent_retry(
    cluster: Cluster, pg: asyncpg.Connection
) -> None:
    users = await seed_users(pg, CLIENTS)
    book = await seed_book(pg, 50_000)
    promo = await seed_promo(pg, 50_000)
    tally = Tally("worker SIGKILL")
    with service(cluster, workers=WORKERS) as svc:
        done = asyncio.Event()
        clients = [
            asyncio.create_task(_client(svc.base, u, book, promo, tally, done)) for u in users
        ]
        try:
            kills = await _kill_until_landed(svc, pg, tally)
            # Load after the last kill: the replaced workers serve the retries and new keys.
            await _more_answers(tally, CLIENTS, "load after the kills")
        finally:
            done.set()
            ops = await asyncio.gather(*clients)
        workers_after = len(svc.workers())
        unhandled = svc.unhandled_errors()

    landed = [k for k in kills if k.cut]
    tally.report(
        kills=len(kills),
        landed=len(landed),
        cut_per_kill=[k.cut for k in kills],
        client_connections_at_kill=[k.connections for k in kills],
        busy_backends_at_kill=[k.busy_backends for k in kills],
        workers_after=workers_after,
        retries=sum(o.retried for o in ops),
        replayed_after_loss=sum(o.replayed_after_loss for o in ops),
        fresh_after_loss=sum(o.fresh_after_loss for o in ops),
    )
    assert not tally.bad, tally.bad[:5]
    assert not unhandled, unhandled[:3]
    assert len(landed) >= KILLS, (
        f"only {len(landed)} of {len(kills)} kills cut a request in flight (clients cut per"
        f" kill: {[k.cut for k in kills]}); the fault did not land mid-load"
    )
    assert workers_after == WORKERS, workers_after
    assert not [k for o in ops for k in o.unresolved], "a key never got a definite answer"
    assert not [k for o in ops for k in o.mismatched], "a key answered with two results"

    # Each key's effect happened at most once: what the database holds per user is exactly
    # what that user's keys were told, one effect per key.
    for user, o in zip(users, ops, strict=True):
        codes = await pg.fetch(
            "SELECT code FROM codes WHERE book_id = $1 AND user_id = $2", book, user.id
        )
        assigned = await pg.fetchval(
            "SELECT count(*) FROM redemption_history WHERE book_id = $1 AND user_id = $2"
            " AND action = 'assigned'",
            book,
            user.id,
        )
        assert {r["code"] for r in codes} == set(o.codes.values()), user.id
        assert assigned == len(o.codes) == len(set(o.codes.values())), (assigned, len(o.codes))
        rows = await pg.fetch(
            "SELECT id, status FROM reservations WHERE promo_id = $1 AND user_id = $2",
            promo,
            user.id,
        )
        assert {r["id"] for r in rows} == set(o.reserved.values()), user.id
        purchased = {r["id"] for r in rows if r["status"] == "purchased"}
        assert purchased == set(o.purchased.values()), user.id
    stored = await pg.fetchval(
        "SELECT count(*) FROM idempotency_keys WHERE user_id = ANY($1)", [u.id for u in users]
    )
    effects = Counter(
        assign=sum(len(o.codes) for o in ops),
        reserve=sum(len(o.reserved) for o in ops),
        purchase=sum(len(o.purchased) for o in ops),
    )
    print(
        f"[fault] worker SIGKILL: effects {dict(effects)}, each exactly once per key;"
        f" {stored} stored idempotent responses",
        flush=True,
    )
    await check_invariants(cluster.url)
