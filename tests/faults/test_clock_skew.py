"""App clock skew: API processes whose clocks run 2 hours ahead and 26 hours behind (the
day before) next to one on the true clock, and outbox workers on shifted clocks, all on one
database. Codes locked through one process are checked and redeemed through another,
reservations likewise, and two promos are announced by workers on clocks a day apart: lock
TTLs, the 60-second holds and the once-per-local-day notification cap follow the database
clock (`now()`), never the process's."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import parsedate_to_datetime

import asyncpg
import httpx
import jwt

from bench.common import SECRET
from tests.faults.harness import (
    API,
    Cluster,
    Service,
    Tally,
    announce,
    check_invariants,
    faketime_env,
    outbox_worker,
    problem_slug,
    random_place,
    seed_held_codes,
    seed_promo,
    seed_users,
    service,
)
from tests.helpers import wait_for

SKEWS = {"ahead": ("+2h", 2 * 3600), "behind": ("-26h", -26 * 3600)}
ANNOUNCERS = ("behind", "ahead")  # the clocks of the workers announcing the two promos
CLIENTS = 12
LOAD_S = 6.0
LONG_LOCK_S = 60  # a lock that is redeemed with its lock_id through the other process
SHORT_LOCK_S = 2  # a lock that lapses while the client waits
HOLD_S = 60  # RESERVATION_TTL_SECONDS, the default
SLACK_S = 5.0  # request latency on a busy box; a skew is hours
MARGIN_S = 0.3  # around a lapse, either answer is right
AUDIENCE = 300
# Local days differ from UTC's by up to 14 hours either way.
ZONES = ("Pacific/Kiritimati", "Pacific/Pago_Pago", "Europe/Madrid", "America/Los_Angeles", "UTC")


def _token(user_id: uuid.UUID) -> str:
    """A token valid on every clock in the test (issued 30 h ago, expiring in 30 h): the
    token check itself runs on the process clock (PyJWT's `iat`/`exp`)."""
    now = int(time.time())
    claims = {"sub": str(user_id), "role": "user", "iat": now - 30 * 3600, "exp": now + 30 * 3600}
    return jwt.encode(claims, SECRET, algorithm="HS256")


def _at(value: str | None) -> float:
    assert value is not None
    return datetime.fromisoformat(value).timestamp()


@dataclass
class Seen:
    crossed_locks: int = 0  # locked through one process, seen locked and redeemed via another
    lapsed_locks: int = 0  # a short lock seen lapsed through another process
    crossed_holds: int = 0  # a hold seen live and purchased through another process
    wrong: list[str] = field(default_factory=list)


class _Client:
    def __init__(self, name: str, code: str, promo: uuid.UUID, tally: Tally, seen: Seen) -> None:
        self.name = name
        self.code = code
        self.promo = promo
        self.tally = tally
        self.seen = seen

    async def call(
        self, http: httpx.AsyncClient, method: str, path: str, body: object = None
    ) -> tuple[httpx.Response | None, float, float]:
        """One request; (response or None if the connection failed, wall clock before, after)."""
        before = time.time()
        try:
            r = await http.request(method, path, json=body if method == "POST" else None)
        except httpx.TransportError as exc:
            self.tally.record(exc)
            return None, before, time.time()
        self.tally.record(r)
        return r, before, time.time()

    def expect(self, ok: bool, what: str, r: httpx.Response | None) -> bool:
        if not ok:
            detail = f"{r.status_code} {r.text[:200]}" if r is not None else "no answer"
            self.seen.wrong.append(f"{self.name}: {what}: {detail}")
        return ok

    async def lock_then_redeem(self, x: httpx.AsyncClient, y: httpx.AsyncClient) -> None:
        """Lock through x; through y the code reads locked until the same instant, refuses
        a redeem without the lock_id and redeems with it."""
        path = f"{API}/codes/{self.code}"
        r, before, after = await self.call(x, "POST", f"{path}/lock", {"ttl_seconds": LONG_LOCK_S})
        if not self.expect(r is not None and r.status_code == 200, "lock", r):
            return
        assert r is not None
        lock = r.json()
        until = _at(lock["locked_until"])
        if not self.expect(
            before + LONG_LOCK_S - SLACK_S <= until <= after + LONG_LOCK_S + SLACK_S,
            f"locked_until {lock['locked_until']} is not {LONG_LOCK_S} s from now",
            r,
        ):
            return
        r, _, _ = await self.call(y, "GET", path)
        if not self.expect(
            r is not None
            and r.status_code == 200
            and r.json()["status"] == "locked"
            and r.json()["locked_until"] == lock["locked_until"],
            "the other process does not see the lock",
            r,
        ):
            return
        r, _, _ = await self.call(y, "POST", f"{path}/redeem", {})
        if not self.expect(
            r is not None and (r.status_code, problem_slug(r)) == (409, "code-locked"),
            "the other process redeemed a live lock without its lock_id",
            r,
        ):
            return
        r, _, _ = await self.call(y, "POST", f"{path}/redeem", {"lock_id": lock["lock_id"]})
        if self.expect(r is not None and r.status_code == 200, "redeem with lock_id", r):
            self.seen.crossed_locks += 1

    async def lock_and_lapse(self, x: httpx.AsyncClient, y: httpx.AsyncClient) -> None:
        """A short lock through x reads locked through y before it lapses (database time)
        and assigned after, when y redeems it without a lock_id."""
        path = f"{API}/codes/{self.code}"
        r, _, _ = await self.call(x, "POST", f"{path}/lock", {"ttl_seconds": SHORT_LOCK_S})
        if not self.expect(r is not None and r.status_code == 200, "short lock", r):
            return
        assert r is not None
        until = _at(r.json()["locked_until"])
        r, before, after = await self.call(y, "GET", path)
        if r is None or r.status_code != 200:
            self.expect(False, "read the code", r)
            return
        status = r.json()["status"]
        if after < until - MARGIN_S:
            self.expect(status == "locked", "a live lock reads as lapsed elsewhere", r)
        elif before > until + MARGIN_S:
            self.expect(status == "assigned", "a lapsed lock reads as live elsewhere", r)
        await asyncio.sleep(max(0.0, until + MARGIN_S - time.time()))
        r, _, _ = await self.call(y, "GET", path)
        if not self.expect(
            r is not None and r.status_code == 200 and r.json()["status"] == "assigned",
            "a lapsed lock still reads as locked",
            r,
        ):
            return
        r, _, _ = await self.call(y, "POST", f"{path}/redeem", {})
        if self.expect(r is not None and r.status_code == 200, "redeem after the lapse", r):
            self.seen.lapsed_locks += 1

    async def hold_then_purchase(self, x: httpx.AsyncClient, y: httpx.AsyncClient) -> None:
        """Reserve through x (expires 60 s from database now); through y the hold is live
        (reading it, reserving again returns it) and y purchases it."""
        r, before, after = await self.call(x, "POST", f"{API}/promos/{self.promo}/reserve", {})
        if not self.expect(r is not None and r.status_code == 201, "reserve", r):
            return
        assert r is not None
        hold = r.json()
        expires = _at(hold["expires_at"])
        if not self.expect(
            before + HOLD_S - SLACK_S <= expires <= after + HOLD_S + SLACK_S,
            f"expires_at {hold['expires_at']} is not {HOLD_S} s from now",
            r,
        ):
            return
        r, _, _ = await self.call(y, "GET", f"{API}/reservations/{hold['id']}")
        if not self.expect(
            r is not None and r.status_code == 200 and r.json()["status"] == "held",
            "the other process does not see the hold",
            r,
        ):
            return
        r, _, _ = await self.call(y, "POST", f"{API}/promos/{self.promo}/reserve", {})
        if not self.expect(
            r is not None and r.status_code == 200 and r.json()["id"] == hold["id"],
            "reserving again elsewhere did not return the live hold",
            r,
        ):
            return
        r, _, _ = await self.call(y, "POST", f"{API}/reservations/{hold['id']}/purchase", {})
        if self.expect(
            r is not None and r.status_code == 200 and r.json()["status"] == "purchased",
            "purchase elsewhere",
            r,
        ):
            self.seen.crossed_holds += 1


async def _run_client(
    index: int,
    user_id: uuid.UUID,
    code: str,
    promo: uuid.UUID,
    services: dict[str, Service],
    tally: Tally,
    seen: Seen,
    stop: float,
    announced: asyncio.Event,
) -> None:
    headers = {"Authorization": f"Bearer {_token(user_id)}"}
    clients = {
        name: httpx.AsyncClient(base_url=svc.base, headers=headers, timeout=30)
        for name, svc in services.items()
    }
    # Every ordered pair of processes on different clocks.
    pairs = [(a, b) for a in clients for b in clients if a != b]
    client = _Client(f"client {index}", code, promo, tally, seen)
    cycles = (client.lock_then_redeem, client.lock_and_lapse, client.hold_then_purchase)
    try:
        turn = index
        while time.monotonic() < stop or not announced.is_set():
            x, y = pairs[turn % len(pairs)]
            await cycles[turn % len(cycles)](clients[x], clients[y])
            turn += 1
    finally:
        for http in clients.values():
            await http.aclose()


async def _announce_on(
    cluster: Cluster, pg: asyncpg.Connection, promo: uuid.UUID, offset: str
) -> float:
    """Queue the promo's start and let a worker on a shifted clock announce it; returns how
    far that worker's clock was from ours (the timestamp of its start-up log line)."""
    with contextlib.ExitStack() as stack:
        env = {**faketime_env(offset), "LOG_LEVEL": "INFO"}
        worker = stack.enter_context(outbox_worker(cluster, env=env))
        await announce(pg, promo)
        await wait_for(
            lambda: pg.fetchval(
                "SELECT status IN ('done', 'cancelled') FROM notification_fanouts"
                " WHERE promo_id = $1",
                promo,
            ),
            timeout=60,
            what=f"the fan-out of {promo} finished",
        )
        finished = time.time()
        await asyncio.to_thread(stack.close)
    for line in worker.log_text().splitlines():
        if '"worker_started"' in line:
            logged = datetime.fromisoformat(json.loads(line)["timestamp"]).timestamp()
            return logged - finished
    raise AssertionError(f"the worker never started: {worker.log_text()[-2000:]}")


def _clock_offset(response: httpx.Response) -> float:
    """How far the answering process's clock is from ours (its `Date` header)."""
    return parsedate_to_datetime(response.headers["date"]).timestamp() - time.time()


async def test_clock_skew_leaves_ttls_holds_and_daily_cap_unchanged(
    cluster: Cluster, pg: asyncpg.Connection
) -> None:
    users = await seed_users(pg, CLIENTS)
    codes = await seed_held_codes(pg, users, uses=10_000)
    promo = await seed_promo(pg, 5_000)
    place = random_place()
    audience = await seed_users(pg, AUDIENCE, at=place, timezones=ZONES)
    announced = [await seed_promo(pg, 10, at=place) for _ in ANNOUNCERS]
    tally = Tally("clock skew")
    seen = Seen()
    with contextlib.ExitStack() as stack:
        # The three processes start side by side.
        managers = {"true": service(cluster, workers=1)} | {
            name: service(cluster, workers=1, env=faketime_env(offset))
            for name, (offset, _) in SKEWS.items()
        }
        started = await asyncio.gather(
            *(asyncio.to_thread(stack.enter_context, m) for m in managers.values()),
            return_exceptions=True,
        )
        failed = [e for e in started if isinstance(e, BaseException)]
        if failed:
            raise failed[0]
        services = {
            name: svc
            for name, svc in zip(managers, started, strict=True)
            if isinstance(svc, Service)
        }
        offsets = {}
        true_clock_tokens = Tally("clock skew, tokens issued on the true clock")
        async with httpx.AsyncClient(timeout=10) as http:
            for name, svc in services.items():
                offsets[name] = _clock_offset(await http.get(f"{svc.base}/healthz"))
                r = await http.get(
                    f"{svc.base}{API}/codes/{codes[users[0].id]}", headers=users[0].headers
                )
                true_clock_tokens.record(r)
        for name, (_, shift) in SKEWS.items():
            assert abs(offsets[name] - shift) < 60, f"{name} runs {offsets[name]:.0f} s off"
        assert abs(offsets["true"]) < 60, offsets

        stop = time.monotonic() + LOAD_S
        finished = asyncio.Event()  # the load lasts at least LOAD_S and both fan-outs
        clients = [
            asyncio.create_task(
                _run_client(i, u.id, codes[u.id], promo, services, tally, seen, stop, finished)
            )
            for i, u in enumerate(users)
        ]
        # Meanwhile two promos for the same audience, announced by workers whose clocks
        # are on different days: the day before, then 28 hours later.
        try:
            for target, name in zip(announced, ANNOUNCERS, strict=True):
                offsets[f"{name}-worker"] = await _announce_on(cluster, pg, target, SKEWS[name][0])
        finally:
            finished.set()
            await asyncio.gather(*clients)
        unhandled = [line for svc in services.values() for line in svc.unhandled_errors()]

    tally.report(
        clocks=" ".join(f"{n}:{o / 3600:+.1f}h" for n, o in offsets.items()),
        crossed_locks=seen.crossed_locks,
        lapsed_locks=seen.lapsed_locks,
        crossed_holds=seen.crossed_holds,
    )
    true_clock_tokens.report()
    assert not tally.bad, tally.bad[:5]
    assert not unhandled, unhandled[:3]
    assert not seen.wrong, seen.wrong[:5]
    for name in ANNOUNCERS:  # the worker started before the fan-out ended: at most a minute
        assert -60 < offsets[f"{name}-worker"] - SKEWS[name][1] < 5, offsets
    assert seen.crossed_locks and seen.lapsed_locks and seen.crossed_holds, seen

    # Every lock lasted exactly what was asked, on the database clock.
    bad_locks = await pg.fetch(
        "SELECT h.id, h.at, h.details FROM redemption_history h JOIN codes c"
        " ON c.book_id = h.book_id AND c.id = h.code_id"
        " WHERE c.code = ANY($1) AND h.action = 'locked'"
        " AND (h.details ->> 'locked_until')::timestamptz - h.at"
        " NOT IN (make_interval(secs => $2), make_interval(secs => $3))",
        list(codes.values()),
        LONG_LOCK_S,
        SHORT_LOCK_S,
    )
    locks = await pg.fetchval(
        "SELECT count(*) FROM redemption_history h JOIN codes c"
        " ON c.book_id = h.book_id AND c.id = h.code_id"
        " WHERE c.code = ANY($1) AND h.action = 'locked'",
        list(codes.values()),
    )
    assert not bad_locks, bad_locks[:5]
    # Every hold lasted exactly 60 s from its creation, on the database clock.
    holds = await pg.fetch(
        "SELECT id, created_at, expires_at FROM reservations WHERE promo_id = $1", promo
    )
    off = [r for r in holds if (r["expires_at"] - r["created_at"]).total_seconds() != HOLD_S]
    assert holds and not off, off[:5]

    # One notification per audience user per local day: the second promo, announced on a
    # clock 28 hours later, finds every user already notified today (unless the user's
    # local midnight fell between the two fan-outs); each day is the user's local date on
    # the database clock when the notification was created.
    ids = [u.id for u in audience]
    fanouts = {
        r["promo_id"]: (r["status"], r["notified"])
        for r in await pg.fetch(
            "SELECT promo_id, status, notified FROM notification_fanouts WHERE promo_id = ANY($1)",
            announced,
        )
    }
    received: dict[uuid.UUID, int] = {
        r["user_id"]: r["count"]
        for r in await pg.fetch(
            "SELECT user_id, count(*) FROM notifications WHERE user_id = ANY($1) GROUP BY user_id",
            ids,
        )
    }
    local_days: dict[uuid.UUID, int] = {
        r["user_id"]: r["count"]
        for r in await pg.fetch(
            "SELECT user_id, count(DISTINCT day) FROM notification_audience"
            " WHERE promo_id = ANY($1) GROUP BY user_id",
            announced,
        )
    }
    off_day = await pg.fetch(
        "SELECT n.id, n.day, n.created_at, u.timezone FROM notifications n"
        " JOIN users u ON u.id = n.user_id WHERE n.user_id = ANY($1)"
        " AND n.day <> (n.created_at AT TIME ZONE u.timezone)::date",
        ids,
    )
    days = await pg.fetch(
        "SELECT day, count(*) FROM notifications WHERE user_id = ANY($1) GROUP BY day ORDER BY day",
        ids,
    )
    print(
        f"[fault] clock skew: {locks} locks, each exactly {SHORT_LOCK_S} or {LONG_LOCK_S} s"
        f" on the database clock; {len(holds)} holds, each exactly {HOLD_S} s;"
        f" fan-outs by workers at {', '.join(SKEWS[n][0] for n in ANNOUNCERS)}:"
        f" {[fanouts.get(p) for p in announced]}; notifications by local day"
        f" {[(str(r['day']), r['count']) for r in days]}",
        flush=True,
    )
    assert fanouts.get(announced[0]) == ("done", AUDIENCE), fanouts
    assert fanouts.get(announced[1], ("", -1))[0] == "done", fanouts
    assert not off_day, [dict(r) for r in off_day[:5]]
    twice = {u: n for u, n in received.items() if n != local_days.get(u)}
    assert len(received) == AUDIENCE and not twice, list(twice.items())[:5]
    await check_invariants(cluster.url)
