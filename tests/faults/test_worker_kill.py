"""An API worker killed with SIGKILL mid-load; clients that lost their answer retry with the
same `Idempotency-Key` and get the stored result or a fresh single effect."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

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
    seed_promo,
    seed_users,
    service,
)

CLIENTS = 16
LOAD_S = 7.0
KILLS_AT_S = (1.5, 4.0)
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
    http: httpx.AsyncClient, path: str, key: str, tally: Tally, ops: Ops, stop: float
) -> httpx.Response | None:
    """Send until the answer is definite; None if it never became so in time."""
    lost = False
    first: Any = None
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
        if time.monotonic() > stop + RESOLVE_S:
            ops.unresolved.append(key)
            return None
        ops.retried += 1
        await asyncio.sleep(0.1)


async def _client(
    base: str, user: User, book: uuid.UUID, promo: uuid.UUID, tally: Tally, stop: float
) -> Ops:
    ops = Ops()
    async with httpx.AsyncClient(base_url=base, headers=user.headers, timeout=10) as http:
        turn = 0
        while time.monotonic() < stop:
            turn += 1
            key = f"k-{uuid.uuid4().hex}"
            if turn % 2:
                r = await _once(http, f"{API}/books/{book}/assign", key, tally, ops, stop)
                if r is not None and r.status_code == 201:
                    ops.codes[key] = r.json()["code"]
                continue
            r = await _once(http, f"{API}/promos/{promo}/reserve", key, tally, ops, stop)
            if r is None or r.status_code not in (200, 201):
                continue
            reservation = uuid.UUID(r.json()["id"])
            ops.reserved[key] = reservation
            key = f"k-{uuid.uuid4().hex}"
            path = f"{API}/reservations/{reservation}/purchase"
            r = await _once(http, path, key, tally, ops, stop)
            if r is not None and r.status_code == 200:
                ops.purchased[key] = reservation
    return ops


async def _kill_workers(svc: Service, started: float) -> list[int]:
    killed = []
    for at in KILLS_AT_S:
        await asyncio.sleep(max(0.0, started + at - time.monotonic()))
        victim = random.choice(svc.workers())
        os.kill(victim.pid, signal.SIGKILL)
        killed.append(victim.pid)
    return killed


async def test_worker_sigkill_and_idempotent_retry(
    cluster: Cluster, pg: asyncpg.Connection
) -> None:
    users = await seed_users(pg, CLIENTS)
    book = await seed_book(pg, 50_000)
    promo = await seed_promo(pg, 50_000)
    tally = Tally("worker SIGKILL")
    with service(cluster, workers=2) as svc:
        started = time.monotonic()
        stop = started + LOAD_S
        clients = [
            asyncio.create_task(_client(svc.base, u, book, promo, tally, stop)) for u in users
        ]
        killed = await _kill_workers(svc, started)
        ops = await asyncio.gather(*clients)
        workers_after = len(svc.workers())
        unhandled = svc.unhandled_errors()

    tally.report(
        kills=len(killed),
        workers_after=workers_after,
        retries=sum(o.retried for o in ops),
        replayed_after_loss=sum(o.replayed_after_loss for o in ops),
        fresh_after_loss=sum(o.fresh_after_loss for o in ops),
    )
    assert not tally.bad, tally.bad[:5]
    assert not unhandled, unhandled[:3]
    assert tally.unknown > 0, "no client saw the kill; the fault did not land mid-load"
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
