"""A crash between commit and response, forced: a proxy between the client and the service
lets a request through, waits until the service starts answering (its transaction has
committed), keeps the answer from the client, SIGKILLs the worker that served it and
drops the client's connection. The client retries with the same `Idempotency-Key` until
the restarted worker answers: the stored result (`Idempotent-Replayed: true`, same status,
body and Location), and the effect happened exactly once. Assign and redeem, then reserve
and purchase, each pair killing both workers back to back, while other clients keep
assigning, reserving and buying."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import asyncpg
import httpx

from tests.faults.harness import (
    API,
    Cluster,
    Crash,
    CrashProxy,
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
    wait_replaced,
)
from tests.helpers import wait_for

CLIENTS = 6
PAUSE_S = 0.02  # between a load client's operations: load, not saturation
ROUNDS = 1
WORKERS = 2
RETRIES = 40  # new connections until the restarted worker takes one
RESOLVE_S = 90.0  # both workers may be restarting, slowly on a busy box
RETRY = {(503, "unavailable"), (409, "busy"), (409, "idempotency-key-in-use")}


async def _until_definite(
    post: Callable[[], Awaitable[httpx.Response]], tally: Tally, deadline: float
) -> tuple[httpx.Response | None, bool]:
    """Send until the answer is definite; (answer or None if it never was, whether an
    earlier attempt was lost)."""
    lost = False
    while time.monotonic() < deadline:
        try:
            r = await post()
        except httpx.TransportError as exc:
            tally.record(exc)
            lost = True
        else:
            tally.record(r)
            if (r.status_code, problem_slug(r)) not in RETRY:
                return r, lost
            assert has_retry_after(r), r.headers
        await asyncio.sleep(0.1)
    return None, lost


@dataclass
class Told:
    """What one load client was told succeeded."""

    codes: set[str] = field(default_factory=set)
    reserved: set[uuid.UUID] = field(default_factory=set)
    purchased: set[uuid.UUID] = field(default_factory=set)
    unresolved: int = 0  # keys that never got a definite answer
    replayed_after_loss: int = 0


async def _load(
    base: str, user: User, book: uuid.UUID, promo: uuid.UUID, tally: Tally, done: asyncio.Event
) -> Told:
    told = Told()
    async with httpx.AsyncClient(base_url=base, headers=user.headers, timeout=30) as http:

        async def once(path: str) -> httpx.Response | None:
            key = f"load-{uuid.uuid4().hex}"
            headers = {"Idempotency-Key": key}
            r, lost = await _until_definite(
                lambda: http.post(path, json={}, headers=headers),
                tally,
                time.monotonic() + RESOLVE_S,
            )
            if r is None:
                told.unresolved += 1
            elif lost and r.headers.get("idempotent-replayed") == "true":
                told.replayed_after_loss += 1
            return r

        turn = 0
        while not done.is_set():
            turn += 1
            await asyncio.sleep(PAUSE_S)
            if turn % 2:
                r = await once(f"{API}/books/{book}/assign")
                if r is not None and r.status_code == 201:
                    told.codes.add(r.json()["code"])
                continue
            r = await once(f"{API}/promos/{promo}/reserve")
            if r is None or r.status_code != 201:
                continue
            reservation = uuid.UUID(r.json()["id"])
            told.reserved.add(reservation)
            r = await once(f"{API}/reservations/{reservation}/purchase")
            if r is not None and r.status_code == 200:
                told.purchased.add(reservation)
    return told


@dataclass
class Outcome:
    route: str
    key: str
    path: str
    user: User
    crash: Crash
    replays: list[httpx.Response] = field(default_factory=list)
    served_by_restarted: bool = False
    replaced_s: float = 0.0  # from the kill to the restarted worker's answer


async def _crash(
    proxy: CrashProxy, user: User, route: str, path: str, tally: Tally
) -> tuple[Outcome, float]:
    """Send one request through the armed proxy: its answer is lost and its worker killed."""
    key = f"crash-{uuid.uuid4().hex}"
    crashed = proxy.arm(key)
    headers = {**user.headers, "Idempotency-Key": key}
    async with httpx.AsyncClient(base_url=proxy.base, headers=headers, timeout=30) as http:
        try:
            r = await http.post(path, json={})
        except httpx.TransportError as exc:
            tally.record(exc)
        else:
            tally.record(r)
            raise AssertionError(f"{route}: the client got an answer: {r.status_code} {r.text}")
    crash = await asyncio.wait_for(crashed, 10)
    return Outcome(route, key, path, user, crash), time.monotonic()


async def _retry(
    proxy: CrashProxy, o: Outcome, restarted: set[int], killed: float, tally: Tally
) -> None:
    """Retry with the same key, a fresh connection per attempt (either worker may take it),
    until a restarted worker has answered."""
    headers = {**o.user.headers, "Idempotency-Key": o.key}
    for _ in range(RETRIES):
        probe = {CrashProxy.PROBE: uuid.uuid4().hex}
        async with httpx.AsyncClient(base_url=proxy.base, headers=headers, timeout=30) as http:
            r, _ = await _until_definite(
                lambda: http.post(o.path, json={}, headers=probe),  # noqa: B023 (awaited here)
                tally,
                time.monotonic() + RESOLVE_S,
            )
        assert r is not None, f"{o.route}: the retry never got a definite answer"
        o.replays.append(r)
        if proxy.served.get(probe[CrashProxy.PROBE]) in restarted:
            o.served_by_restarted = True
            break
    o.replaced_s = time.monotonic() - killed


async def _crash_both_workers(
    proxy: CrashProxy,
    svc: Service,
    user: User,
    requests: list[tuple[str, Callable[[list[Outcome]], str]]],
    tally: Tally,
) -> list[Outcome]:
    """One request per worker, back to back: the first kill leaves one worker, which takes
    and dies with the second. Then both are restarted and each request is retried."""
    before = {p.pid for p in svc.workers()}
    started = svc.startups()
    outcomes: list[Outcome] = []
    kills: list[float] = []
    for route, path in requests:
        outcome, killed = await _crash(proxy, user, route, path(outcomes), tally)
        outcomes.append(outcome)
        kills.append(killed)
    killed_pids = {o.crash.pid for o in outcomes}
    pids = await asyncio.to_thread(wait_replaced, svc, killed_pids, WORKERS, started)
    for o, killed in zip(outcomes, kills, strict=True):
        await _retry(proxy, o, pids - before, killed, tally)
    return outcomes


def _fixed(path: str) -> Callable[[list[Outcome]], str]:
    return lambda _: path


def _purchase_path(earlier: list[Outcome]) -> str:
    """The purchase of the reservation whose answer the previous crash kept."""
    reservation = json.loads(earlier[-1].crash.body)["id"]
    return f"{API}/reservations/{reservation}/purchase"


async def test_crash_between_commit_and_response(cluster: Cluster, pg: asyncpg.Connection) -> None:
    users = await seed_users(pg, CLIENTS)
    victims = await seed_users(pg, ROUNDS)
    codes = await seed_held_codes(pg, victims, uses=5)
    book = await seed_book(pg, 50_000)
    promo = await seed_promo(pg, 50_000)
    tally = Tally("crash after commit")
    outcomes: list[Outcome] = []
    with service(cluster, workers=WORKERS) as svc:
        async with CrashProxy(svc.port) as proxy:
            done = asyncio.Event()
            load = [
                asyncio.create_task(_load(svc.base, u, book, promo, tally, done)) for u in users
            ]
            try:
                # The load is under way (answers coming back) before the first crash.
                await wait_for(lambda: tally.ok >= 2 * CLIENTS, timeout=60, what="load")
                for victim in victims:
                    outcomes += await _crash_both_workers(
                        proxy,
                        svc,
                        victim,
                        [
                            ("assign", _fixed(f"{API}/books/{book}/assign")),
                            ("redeem", _fixed(f"{API}/codes/{codes[victim.id]}/redeem")),
                        ],
                        tally,
                    )
                    outcomes += await _crash_both_workers(
                        proxy,
                        svc,
                        victim,
                        [
                            ("reserve", _fixed(f"{API}/promos/{promo}/reserve")),
                            ("purchase", _purchase_path),
                        ],
                        tally,
                    )
            finally:
                done.set()
                told = await asyncio.gather(*load)
        unhandled = svc.unhandled_errors()

    tally.report(
        kills=len(proxy.crashes),
        retries_until_restarted_worker=sum(len(o.replays) for o in outcomes),
        load_replayed_after_loss=sum(t.replayed_after_loss for t in told),
    )
    assert not tally.bad, tally.bad[:5]
    assert not unhandled, unhandled[:3]
    assert len(proxy.crashes) == len(outcomes) == 4 * ROUNDS
    assert not [t for t in told if t.unresolved], "a load request never got a definite answer"

    # The retries got the answer the client lost, from the stored result.
    for o in outcomes:
        assert o.crash.status in (200, 201), (o.route, o.crash.status, o.crash.body)
        assert o.served_by_restarted, f"{o.route}: a restarted worker never answered"
        for r in o.replays:
            assert r.status_code == o.crash.status, (o.route, r.status_code, r.text)
            assert r.headers.get("idempotent-replayed") == "true", (o.route, r.headers)
            assert r.json() == json.loads(o.crash.body), (o.route, r.text, o.crash.body)
            assert r.headers.get("location") == o.crash.headers.get("location"), o.route
        if o.crash.status == 201:
            assert o.crash.headers.get("location"), o.route

    # Each crashed request's effect happened exactly once.
    by_route: dict[str, list[Outcome]] = {}
    for o in outcomes:
        by_route.setdefault(o.route, []).append(o)
    for victim, assign, redeem, reserve, purchase in zip(
        victims,
        by_route["assign"],
        by_route["redeem"],
        by_route["reserve"],
        by_route["purchase"],
        strict=True,
    ):
        body = json.loads(assign.crash.body)
        held = await pg.fetch(
            "SELECT code FROM codes WHERE book_id = $1 AND user_id = $2", book, victim.id
        )
        assert [r["code"] for r in held] == [body["code"]], held
        assert assign.crash.headers["location"] == f"{API}/codes/{body['code']}"
        body = json.loads(redeem.crash.body)
        row = await pg.fetchrow(
            "SELECT c.redemptions, array_agg(h.id) AS history FROM codes c"
            " JOIN redemption_history h ON h.book_id = c.book_id AND h.code_id = c.id"
            " AND h.action = 'redeemed' WHERE c.code = $1 GROUP BY c.redemptions",
            codes[victim.id],
        )
        assert row is not None and row["redemptions"] == 1, row
        assert row["history"] == [body["redemption_id"]], (row, body)
        body = json.loads(reserve.crash.body)
        rows = await pg.fetch(
            "SELECT id, status FROM reservations WHERE promo_id = $1 AND user_id = $2",
            promo,
            victim.id,
        )
        assert [str(r["id"]) for r in rows] == [body["id"]], rows
        assert reserve.crash.headers["location"] == f"{API}/reservations/{body['id']}"
        assert rows[0]["status"] == "purchased", rows
        assert json.loads(purchase.crash.body)["status"] == "purchased"

    # The load's keys: what each client was told is exactly what the database holds.
    for user, t in zip(users, told, strict=True):
        held = await pg.fetch(
            "SELECT code FROM codes WHERE book_id = $1 AND user_id = $2", book, user.id
        )
        assert {r["code"] for r in held} == t.codes, user.id
        rows = await pg.fetch(
            "SELECT id, status FROM reservations WHERE promo_id = $1 AND user_id = $2",
            promo,
            user.id,
        )
        assert {r["id"] for r in rows} == t.reserved, user.id
        assert {r["id"] for r in rows if r["status"] == "purchased"} == t.purchased, user.id
    print(
        "[fault] crash after commit: "
        + "; ".join(
            f"{o.route} {o.crash.status} (worker {o.crash.pid} killed, replayed"
            f" {len(o.replays)}x, the last by a restarted worker {o.replaced_s:.1f} s after"
            " the kill)"
            for o in outcomes
        )
        + f"; load effects: assign {sum(len(t.codes) for t in told)},"
        f" reserve {sum(len(t.reserved) for t in told)},"
        f" purchase {sum(len(t.purchased) for t in told)}, each exactly once per key",
        flush=True,
    )
    await check_invariants(cluster.url)
