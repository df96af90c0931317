"""`make test-ha`: failover under load on real engines (Patroni-managed PostgreSQL 15, etcd,
HAProxy, PgBouncer, three API instances, two notification workers), each fault injected
several times; after each, the unknown outcomes are retried with their keys and the database
is checked against what the clients were told. Prints a table and one summary line; exits 1
on any violation. Everything it starts is stopped, and its data deleted, however it ends."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import signal
import statistics
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import asyncpg
import httpx

from tests.faults.harness import (
    User,
    announce,
    random_place,
    seed_book,
    seed_held_codes,
    seed_promo,
    seed_users,
)
from tests.ha import partition
from tests.ha.delay import delayed_standbys, quorum_standbys
from tests.ha.load import Load, Outcome, Stream, reconcile
from tests.ha.topology import (
    LOOP_WAIT,
    TTL,
    Node,
    Topology,
    api_proc,
    api_ready,
    app_check,
    create_and_migrate,
    etcd_healthy,
    patroni_switchover,
    pgbouncer_api_env,
    poll_until,
    run_in_topology,
    start_database,
    worker_proc,
)
from tests.polling import wait_until

PER_KIND = 6  # clients per kind of write (assign, lock+redeem, reserve+purchase)
REPEATS = 2
STEADY_OKS = 60  # acknowledged writes after a resume before the fault is injected
AFTER_OKS = 40  # ... and after recovery before the window closes
FANOUT_AUDIENCE = 20_000
SSE_PER_AUDIENCE = 3
BUDGET_S = 43.8 * 60  # 99.9 % of a 730-hour month
POLL_S = 0.25
# Each API instance reaches the primary its own way (api1 and worker1 through HAProxy, api2
# and worker2 with the multi-host URL, api3 through PgBouncer and HAProxy): the write outage
# is measured on each.
PATHS = {"api1": "HAProxy", "api2": "multi-host URL", "api3": "PgBouncer"}


# At most one primary ---------------------------------------------------------------------


@dataclass
class PrimaryWatch:
    """Every node asked every 250 ms, on a connection of its own, whether it is writable
    (`pg_is_in_recovery()`) and whether it can acknowledge a commit; every 250 ms the nodes
    counted that last said both. In strict synchronous mode a writable node acknowledges a
    COMMIT only once a synchronous (quorum) standby streaming from it has flushed it: a
    primary whose Patroni is stopped (SIGSTOP) keeps `synchronous_standby_names` but loses
    its standbys to the new leader, so its COMMITs wait and nothing it holds was ever
    acknowledged. Writable nodes alone are counted too (`two_writable`), for the record. A
    node that does not answer in time keeps its last answer (so a slow old primary still
    counts); one that refuses connections or drops them counts as neither. Each node is
    asked over its Unix socket: what it is inside, even while a partition cuts it off."""

    nodes: list[Node]
    samples: int = 0
    two_primaries: int = 0
    two_writable: int = 0
    state: dict[str, tuple[bool, bool]] = field(default_factory=dict)

    _PROBE = (
        "SELECT NOT pg_is_in_recovery() AS writable,"
        " NOT pg_is_in_recovery() AND (current_setting('synchronous_standby_names') = ''"
        "  OR EXISTS (SELECT FROM pg_stat_replication"
        "   WHERE state = 'streaming' AND sync_state IN ('sync', 'quorum'))) AS acknowledges"
    )

    async def _probe(self, node: Node) -> None:
        url = node.socket_url
        conn: asyncpg.Connection | None = None
        while True:
            tick = time.monotonic()
            try:
                if conn is None or conn.is_closed():
                    conn = await asyncpg.connect(url, timeout=1)
                row = await conn.fetchrow(self._PROBE, timeout=1)
                assert row is not None
                self.state[node.name] = (row["writable"], row["acknowledges"])
            except TimeoutError:
                if conn is not None:
                    conn.terminate()
                conn = None  # no answer yet: the last one stands
            except Exception:  # refused, reset, starting up, shutting down
                if conn is not None:
                    conn.terminate()
                conn = None
                self.state[node.name] = (False, False)
            await asyncio.sleep(max(0.0, POLL_S - (time.monotonic() - tick)))

    async def run(self) -> None:
        probes = [asyncio.create_task(self._probe(n)) for n in self.nodes]
        try:
            while True:
                await asyncio.sleep(POLL_S)
                self.samples += 1
                states = list(self.state.values())
                if sum(ack for _, ack in states) > 1:
                    self.two_primaries += 1
                if sum(writable for writable, _ in states) > 1:
                    self.two_writable += 1
        finally:
            for probe in probes:
                probe.cancel()
            await asyncio.gather(*probes, return_exceptions=True)


# Faults ------------------------------------------------------------------------------------


@dataclass
class Run:
    fault: str
    outcomes: list[Outcome]
    outage_s: float
    rejoin_s: float | None
    note: str = ""
    by_path: dict[str, float] = field(default_factory=dict)  # write outage per way


async def _until(what: str, check: Callable[[], bool], timeout: float) -> float:
    """Poll a blocking `check` (off the event loop) until it is true; the seconds it took."""
    return await poll_until(what, lambda: asyncio.to_thread(check), timeout, every=POLL_S)


def _leader(topo: Topology, timeout: float = 60) -> Node:
    """The running leader, waited for (Patroni's view lags a crash by up to a loop)."""
    leader: Node = wait_until(topo.leader, timeout=timeout, every=POLL_S, what="a running leader")
    return leader


def _streaming(topo: Topology, name: str) -> bool:
    return any(m["name"] == name and m.get("state") == "streaming" for m in topo.members())


async def _rejoined(topo: Topology, old: Node, t0: float) -> float | None:
    """Seconds from the fault until the old primary streams as a replica; None when it
    stayed the primary (restarted in place)."""
    await _until("the cluster healthy again", topo.healthy, 90)
    if _leader(topo).name == old.name:
        return None
    await _until(f"{old.name} streaming", lambda: _streaming(topo, old.name), 90)
    return time.monotonic() - t0


async def _read_only_after(node: Node, t0: float) -> float:
    """Seconds from `t0` until `node`'s server is read-only (or down), asked over its Unix
    socket."""
    while True:
        try:
            conn = await asyncpg.connect(node.socket_url, timeout=1)
            try:
                if await conn.fetchval("SELECT pg_is_in_recovery()", timeout=1):
                    break
            finally:
                conn.terminate()
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
            break  # stopped or restarting: no longer writable
        await asyncio.sleep(POLL_S)
    return time.monotonic() - t0


def _taken_over(topo: Topology, old: Node) -> bool:
    """Another node leads and a standby streams from it."""
    leader = topo.leader()
    return (
        leader is not None
        and leader.name != old.name
        and any(m.get("state") == "streaming" and m["name"] != old.name for m in topo.members())
    )


@dataclass
class Audience:
    """Users at one place, far from everyone else's, for one fan-out."""

    place: tuple[float, float]
    users: list[User]


class Faults:
    def __init__(
        self,
        topo: Topology,
        admin_pg: Callable[[], Awaitable[asyncpg.Connection]],
        audiences: list[Audience],
        load: Load,
    ):
        self.topo = topo
        self.connect = admin_pg
        self.audiences = list(audiences)
        self.load = load
        self.api_turn = 0
        self.etcd_turn = 0
        self.delay_figures: list[str] = []

    async def switchover(self) -> tuple[float | None, str]:
        topo = self.topo
        old = _leader(topo)
        t0 = time.monotonic()
        # No candidate named: Patroni promotes the healthiest quorum standby and the other
        # follows it at once (a named one would keep the other waiting 2 s, every second
        # of it write outage in strict synchronous mode).
        await asyncio.to_thread(patroni_switchover, old)
        rejoin = await _rejoined(topo, old, t0)
        new = _leader(topo)
        assert new.name != old.name, f"{old.name} still leads after the switchover"
        return rejoin, f"{old.name}->{new.name}"

    async def kill_postgres(self) -> tuple[float | None, str]:
        old = _leader(self.topo)
        pid = old.postmaster_pid()
        assert pid is not None
        t0 = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        # The cluster's view (and /primary, from Patroni's cached role) says "running" until
        # Patroni's next loop: wait for a new postmaster (or a new leader) first.
        await _until(
            "postgres restarted or replaced",
            lambda: (
                old.postmaster_pid() not in (None, pid)
                or (self.topo.leader() or old).name != old.name
            ),
            60,
        )
        rejoin = await _rejoined(self.topo, old, t0)
        return rejoin, f"{old.name} postmaster {pid}; leader {_leader(self.topo).name}"

    async def kill_patroni(self) -> tuple[float | None, str]:
        old = _leader(self.topo)
        t0 = time.monotonic()
        old.proc.kill9()
        # The supervisor (systemd Restart=always, RestartSec=2) brings it back.
        await asyncio.sleep(2)
        old.proc.start()
        rejoin = await _rejoined(self.topo, old, t0)
        return rejoin, f"{old.name} patroni; leader {_leader(self.topo).name}"

    async def sigstop_patroni(self) -> tuple[float | None, str]:
        """The primary's Patroni frozen (SIGSTOP), its PostgreSQL running on: the leader key
        lapses after ttl, a standby takes over and the other follows it, while the frozen
        Patroni can neither demote its server nor be told to. Then SIGCONT: it finds the key
        gone, demotes and rewinds its server and follows the new leader."""
        topo = self.topo
        old = _leader(topo)
        t0 = time.monotonic()
        os.kill(old.proc.pid, signal.SIGSTOP)
        try:
            took = await _until(
                "a new leader with a standby streaming from it",
                lambda: _taken_over(topo, old),
                TTL + 60,
            )
        finally:
            os.kill(old.proc.pid, signal.SIGCONT)
        rejoin = await _rejoined(topo, old, t0)
        return rejoin, (f"{old.name} patroni stopped {took:.1f} s; leader {_leader(topo).name}")

    async def partition_primary(self) -> tuple[float | None, str]:
        """The primary's node cut off (every packet its Patroni and PostgreSQL send or
        receive dropped, `tests/ha/partition.py`) until another node leads with a standby
        streaming from it, then healed. Unlike a frozen Patroni, this one runs on: unable
        to reach etcd it should demote its own server before its leader key lapses. After
        the heal it rewinds its server and follows the new leader."""
        topo = self.topo
        old = _leader(topo)
        t0 = time.monotonic()
        with partition.partitioned(topo.cgroup(old)):
            demotion = asyncio.create_task(_read_only_after(old, t0))
            took = await _until(
                "a new leader with a standby streaming from it",
                lambda: _taken_over(topo, old),
                TTL + 60,
            )
            demoted = f"{demotion.result():.1f} s" if demotion.done() else "not yet"
            demotion.cancel()
            await asyncio.gather(demotion, return_exceptions=True)
        rejoin = await _rejoined(topo, old, t0)
        return rejoin, (
            f"{old.name} cut off {took:.1f} s; its server read-only after {demoted};"
            f" leader {_leader(topo).name}"
        )

    async def kill_etcd(self) -> tuple[float | None, str]:
        """One of the three etcd members killed -9 (each in turn): the other two are a
        majority, so the leader key is still renewed, the leader stays and writes go on.
        Restarted 2 s later on its data, it rejoins."""
        topo = self.topo
        index = self.etcd_turn % len(topo.etcd_ports)
        self.etcd_turn += 1
        proc = topo.procs[f"etcd{index + 1}"]
        old = _leader(topo)
        proc.kill9()
        # Longer than loop_wait: the leader renews its key at least once without the member.
        await asyncio.sleep(2 * LOOP_WAIT)
        assert _leader(topo).name == old.name, "the leader changed with one etcd member lost"
        proc.start()
        await _until(f"{proc.name} healthy", lambda: etcd_healthy(topo, index), 60)
        await _until("the cluster healthy again", topo.healthy, 90)
        leader = _leader(topo)
        assert leader.name == old.name, f"the leader moved from {old.name} to {leader.name}"
        return None, f"{proc.name} killed; leader {leader.name} kept"

    async def kill_api(self) -> tuple[float | None, str]:
        # In turn, the last one (behind PgBouncer) first: a restarted instance checks its
        # schema and opens its pools through its own way to the primary.
        count = len(self.topo.api_ports)
        name = f"api{(self.api_turn + count - 1) % count + 1}"
        self.api_turn += 1
        proc = self.topo.procs[name]
        port = self.topo.api_ports[int(name[3:]) - 1]
        proc.kill9()
        await asyncio.sleep(1)  # the supervisor's restart delay
        proc.start()
        await _until(f"{name} up again", lambda: api_ready(port), 60)
        return None, name

    async def delay_one_standby(self) -> tuple[float | None, str]:
        """One quorum standby's replication delayed (50 ms, then 200 ms, each way): the
        other confirms the commits, so their latency should not move."""
        return await self._delay_standbys(1)

    async def delay_both_standbys(self) -> tuple[float | None, str]:
        """Both standbys' replication delayed: every commit waits for a delayed
        confirmation, one round trip (twice the delay) longer."""
        return await self._delay_standbys(2)

    async def _delay_standbys(self, count: int) -> tuple[float | None, str]:
        topo = self.topo
        leader = _leader(topo)
        standbys = await quorum_standbys(leader)
        assert len(standbys) >= count, f"quorum standbys of {leader.name}: {standbys}"
        names = sorted(random.sample(standbys, count))
        figures = await delayed_standbys(topo, leader, names, self.load)
        self.delay_figures.append(figures)
        await _until("the cluster healthy again", topo.healthy, 60)
        after = _leader(topo)
        assert after.name == leader.name, f"a failover under delay: {leader.name} -> {after.name}"
        return None, f"{figures}; leader {leader.name} kept"

    async def kill_worker(self) -> tuple[float | None, str]:
        conn = await self.connect()
        try:
            target = self.audiences.pop(0)
            audience = target.users
            promo = await seed_promo(conn, 10, at=target.place, radius_m=5000)
            await announce(conn, promo)
            victim = row = None
            deadline = time.monotonic() + 60
            while victim is None and time.monotonic() < deadline:
                row = await conn.fetchrow(
                    "SELECT f.notified, o.locked_by FROM notification_fanouts f"
                    " JOIN outbox o ON o.key = f.promo_id::text AND o.topic = 'promo.started'"
                    " WHERE f.promo_id = $1 AND f.status = 'sending' AND o.status = 'running'",
                    promo,
                )
                if row is not None and row["notified"] > 0 and row["locked_by"]:
                    pid = int(row["locked_by"].split(":")[1])
                    victim = next(
                        (
                            p
                            for n, p in self.topo.procs.items()
                            if n[:6] == "worker" and p.pid == pid
                        ),
                        None,
                    )
                    notified_at_kill = row["notified"]
                await asyncio.sleep(0.05)
            assert victim is not None, f"the fan-out was not caught running: {row}"
            victim.kill9()
            await asyncio.sleep(1)
            victim.start()
            while True:
                status = await conn.fetchval(
                    "SELECT status FROM notification_fanouts WHERE promo_id = $1", promo
                )
                if status != "sending":
                    break
                if time.monotonic() > deadline + 120:
                    raise TimeoutError("the fan-out did not finish")
                await asyncio.sleep(0.25)
            rows, users = await conn.fetchrow(
                "SELECT count(*), count(DISTINCT user_id) FROM notifications WHERE promo_id = $1",
                promo,
            )
            expected = len(audience)
            assert rows == users == expected, (
                f"fan-out: {rows} notifications for {users} users of {expected}"
            )
            return None, (
                f"{victim.name} killed at {notified_at_kill}/{expected}; "
                f"{rows} notified exactly once"
            )
        finally:
            await conn.close()


# The run -----------------------------------------------------------------------------------


def _outages(outcomes: list[Outcome], per_path: bool) -> dict[str, float]:
    """How long writes failed: from the start of the first write refused (503) or left
    unknown to the first acknowledgment after the last one, intermittent successes in
    between included. On each way to the database (`PATHS`) when `per_path`; else as the
    clients saw it, under "clients" (an API instance killed: the others serve)."""
    served = sorted({o.served_by for o in outcomes if o.served_by})
    paths: list[str | None] = list(served) if per_path else [None]
    outages = {}
    for path in paths:
        mine = [o for o in outcomes if path is None or o.served_by in (path, None)]
        failed = [o for o in mine if o.status == 503 or o.kind == "unknown"]
        outage = 0.0
        if failed:
            first = min(o.started for o in failed)
            last = max(o.ended for o in failed)
            back = [o.ended for o in mine if o.kind == "ok" and o.started >= last]
            outage = (min(back) if back else last) - first
        outages[path or "clients"] = outage
    return outages


async def _commit_latency(url: str, n: int = 400) -> str:
    """p50/p99 of a one-row write's COMMIT with synchronous_commit on (the quorum standby
    confirms) and local (the primary's disk only), on the primary, nothing else running."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("CREATE TABLE IF NOT EXISTS ha_commit_probe (n int)")
        figures = []
        for mode in ("on", "local"):
            await conn.execute(f"SET synchronous_commit = {mode}")
            took = []
            for i in range(n):
                t = time.perf_counter()
                await conn.execute("INSERT INTO ha_commit_probe VALUES ($1)", i)
                took.append((time.perf_counter() - t) * 1000)
            took.sort()
            figures.append(f"{mode}: p50 {took[n // 2]:.2f} ms, p99 {took[int(n * 0.99)]:.2f} ms")
        await conn.execute("DROP TABLE ha_commit_probe")
        return "; ".join(figures)
    finally:
        await conn.close()


async def _drained(streams: list[Stream], topo: Topology, timeout: float = 30) -> None:
    """Give the streams time to deliver what the inboxes hold (a stream cut by the last
    fault may still be reconnecting)."""
    conn = await asyncpg.connect(_leader(topo).url)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            counts = await conn.fetch(
                "SELECT user_id, count(*) AS n FROM notifications"
                " WHERE user_id = ANY($1::uuid[]) GROUP BY user_id",
                [st.user.id for st in streams],
            )
            held = {r["user_id"]: r["n"] for r in counts}
            if all(len(st.ids) >= held.get(st.user.id, 0) for st in streams):
                return
            await asyncio.sleep(0.25)
    finally:
        await conn.close()


async def _streams_match_inboxes(url: str, streams: list[Stream]) -> list[str]:
    """Every stream received exactly its user's inbox: nothing missed, nothing twice."""
    conn = await asyncpg.connect(url)
    try:
        bad = []
        for st in streams:
            inbox = [
                r["id"]
                for r in await conn.fetch(
                    "SELECT id FROM notifications WHERE user_id = $1 ORDER BY id", st.user.id
                )
            ]
            if sorted(st.ids) != inbox:
                bad.append(f"sse {st.user.id}: received {st.ids}, inbox {inbox}")
        print(
            f"[ha] sse: {len(streams)} streams, {sum(st.connects for st in streams)} connects"
            f" (each cut one reconnects with Last-Event-ID),"
            f" {sum(len(st.ids) for st in streams)} notifications received,"
            f" {len(bad)} streams differing from their inbox",
            flush=True,
        )
        return bad
    finally:
        await conn.close()


async def _wait_oks(load: Load, since: int, n: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while sum(1 for o in load.outcomes[since:] if o.kind == "ok") < n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"fewer than {n} acknowledged writes in {timeout:.0f} s")
        await asyncio.sleep(0.05)


Inject = Callable[[], Awaitable[tuple[float | None, str]]]


async def drill(
    topo: Topology,
    load: Load,
    name: str,
    inject: Inject,
    steady_oks: int = STEADY_OKS,
    after_oks: int = AFTER_OKS,
) -> tuple[Run, str | None]:
    """One fault under the running load: `steady_oks` acknowledged writes, the fault,
    `after_oks` more once it is over; then the load paused, every unknown outcome settled
    with its key, `python -m app check` on the leader and the database reconciled with what
    the clients were told. The run's figures, and what went wrong (None when nothing did).
    The load stays paused: `load.resume()` for the next fault."""
    mark = len(load.outcomes)
    await _wait_oks(load, mark, steady_oks)
    t0 = time.monotonic()
    rejoin, note = await inject()
    recovered = len(load.outcomes)
    await _wait_oks(load, recovered, after_oks)
    await load.pause()
    window = [o for o in load.outcomes[mark:] if o.started >= t0 - 0.5]
    await load.resolve(load.outcomes[mark:])
    leader = _leader(topo)
    await asyncio.to_thread(app_check, leader.url)
    ledger = await reconcile(leader.url, load)
    per_path = name not in ("kill -9 api",)
    by_path = _outages(window, per_path)
    run_ = Run(name, window, max(by_path.values(), default=0.0), rejoin, note, by_path)
    refused = Counter(o.served_by or "lb" for o in window if o.status == 503)
    outage = ", ".join(f"{p} {s:.2f} s" for p, s in by_path.items())
    print(
        f"[ha] {name}: {note}; requests {len(window)},"
        f" 503 by instance {dict(sorted(refused.items()))},"
        f" outage {outage},"
        f" rejoin {'-' if rejoin is None else f'{rejoin:.1f} s'},"
        f" lost {len(ledger.lost)}, duplicated {len(ledger.duplicated)},"
        f" unresolved {ledger.unresolved}, check ok on {leader.name}",
        flush=True,
    )
    failed = ledger.lost or ledger.duplicated or ledger.unresolved
    return run_, f"{name}: {ledger}" if failed else None


async def run(topo: Topology) -> int:
    started = time.monotonic()
    await asyncio.to_thread(start_database, topo)
    print(
        f"[ha] three etcd members and three Patroni nodes up in {time.monotonic() - started:.1f} s",
        flush=True,
    )
    await create_and_migrate(topo)

    async def connect() -> asyncpg.Connection:
        return await asyncpg.connect(topo.proxy_url)

    print(f"[ha] migrated at {time.monotonic() - started:.1f} s", flush=True)
    pg = await connect()
    users = await seed_users(pg, 3 * PER_KIND)
    book = await seed_book(pg, 100_000)
    held_by_id = await seed_held_codes(pg, users[PER_KIND : 2 * PER_KIND], uses=10_000_000)
    promo = await seed_promo(pg, 50_000)
    audiences = []
    for _ in range(REPEATS):
        place = random_place()
        audiences.append(Audience(place, await seed_users(pg, FANOUT_AUDIENCE, at=place)))
    await pg.close()
    held = {i: held_by_id[users[i].id] for i in range(PER_KIND, 2 * PER_KIND)}

    # Three ways to the primary: api1 and worker1 through HAProxy, api2 and worker2 with the
    # multi-host URL (target_session_attrs=read-write), api3 through PgBouncer (transaction
    # mode) in front of HAProxy, its LISTEN session straight through HAProxy.
    for i, url in enumerate((topo.proxy_url, topo.multi_host_url)):
        topo.start(api_proc(topo, i, url))
        topo.start(worker_proc(topo, i, url))
    topo.start(api_proc(topo, 2, topo.pgbouncer_url, pgbouncer_api_env(topo)))
    for port in topo.api_ports:
        await _until(f"API on {port}", lambda port=port: api_ready(port), 60)
    print(f"[ha] topology up in {time.monotonic() - started:.1f} s", flush=True)

    watch = PrimaryWatch(topo.nodes)
    watcher = asyncio.create_task(watch.run())
    runs: list[Run] = []
    failures: list[str] = []
    async with (
        httpx.AsyncClient(base_url=topo.api_base, timeout=30) as http,
        httpx.AsyncClient(base_url=topo.api_base, timeout=httpx.Timeout(30, read=20)) as sse,
    ):
        load = Load(http, users, book, held, promo)
        faults = Faults(topo, connect, audiences, load)
        schedule = _schedule(faults)
        clients = load.start(PER_KIND)
        # Users of every fan-out to come follow their live stream from now on, through
        # every fault; at the end each must have received exactly its inbox.
        streams = [Stream(u) for a in audiences for u in a.users[:SSE_PER_AUDIENCE]]
        stop_streams = asyncio.Event()
        followers = [asyncio.create_task(st.follow(sse, stop_streams)) for st in streams]
        try:
            for name, inject in schedule:
                run_, failure = await drill(topo, load, name, inject)
                runs.append(run_)
                if failure:
                    failures.append(failure)
                load.resume()
        finally:
            load.stop()
            await asyncio.gather(*clients, return_exceptions=True)
            with contextlib.suppress(Exception):  # never hide what ended the run
                await _drained(streams, topo)
            stop_streams.set()
            for follower in followers:
                follower.cancel()
            await asyncio.gather(*followers, return_exceptions=True)
            if watcher.done():
                watcher.result()  # the poller must not have died: raise what killed it
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
        ledger = await reconcile(_leader(topo).url, load)

    sse_bad = await _streams_match_inboxes(_leader(topo).url, streams)
    latency = await _commit_latency(_leader(topo).url)
    print(f"[ha] one-row write, synchronous_commit {latency}", flush=True)
    five_xx = non_503_5xx(topo, load)
    _table(runs)
    _path_table(runs)
    for figures in faults.delay_figures:
        print(f"[ha] delay: {figures}", flush=True)
    print(f"[ha] pgbouncer closed: {_pgbouncer_closes(topo)}", flush=True)
    two_ms = int(watch.two_primaries * POLL_S * 1000)
    max_outage = max((r.outage_s for r in runs), default=0.0)
    served = ", ".join(f"via {api} ({way}) {_served(load, api)}" for api, way in PATHS.items())
    print(
        f"[ha] {watch.samples} primary polls; {len(load.outcomes)} requests;"
        f" ok {served}; {time.monotonic() - started:.0f} s in all;"
        f" load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs;"
        f" two nodes writable {int(watch.two_writable * POLL_S * 1000)} ms"
        f" (two acknowledging commits: two-primaries below)",
        flush=True,
    )
    for line in failures + sse_bad + load.bad[:10]:
        print(f"[ha] FAIL {line}", flush=True)
    print(
        f"ha: faults {len(runs)}, acknowledged {ledger.acknowledged},"
        f" lost {len(ledger.lost)}, duplicated {len(ledger.duplicated)},"
        f" two-primaries {two_ms} ms, max write outage {max_outage:.1f} s,"
        f" non-503 5xx {five_xx}",
        flush=True,
    )
    ok = not (failures or sse_bad or ledger.lost or ledger.duplicated or two_ms or five_xx)
    return 0 if ok and len(runs) == len(schedule) else 1


def non_503_5xx(topo: Topology, load: Load) -> int:
    """Answers that were a 5xx other than 503 (or not a problem at all), and errors the API
    instances logged as unhandled (each a 500); the first two of those printed."""
    unhandled = [
        line
        for n in topo.procs
        if n.startswith("api")
        for line in (topo.root / f"{n}.log").read_text(errors="replace").splitlines()
        if "unhandled_error" in line
    ]
    for line in unhandled[:2]:
        print(f"[ha] unhandled: {line[-3000:]}", flush=True)
    return len(load.bad) + len(unhandled)


def _schedule(faults: Faults) -> list[tuple[str, Inject]]:
    """Every fault REPEATS times, in turn; `HA_FAULTS="switchover,kill -9 worker"` keeps
    only those."""
    schedule: list[tuple[str, Inject]] = [
        ("switchover", faults.switchover),
        ("kill -9 postgres", faults.kill_postgres),
        ("kill -9 patroni", faults.kill_patroni),
        ("SIGSTOP patroni", faults.sigstop_patroni),
        ("etcd member lost", faults.kill_etcd),
        ("partition primary", faults.partition_primary),
        ("delay 1 standby", faults.delay_one_standby),
        ("delay 2 standbys", faults.delay_both_standbys),
        ("kill -9 api", faults.kill_api),
        ("kill -9 worker", faults.kill_worker),
    ] * REPEATS
    if faults.topo.cgroups is None:  # no partition can be made on this host (printed)
        schedule = [(n, f) for n, f in schedule if n != "partition primary"]
    only = os.environ.get("HA_FAULTS")
    if only:
        schedule = [(n, f) for n, f in schedule if n in only.split(",")]
    return schedule


_CLOSING = re.compile(r" ([CS])-0x[0-9a-f]+: .*?closing because: (.+?) \(age=")


def _pgbouncer_closes(topo: Topology) -> str:
    """Why PgBouncer closed connections over the run, from its log: server connections
    (S, to HAProxy) and client ones (C, the API instance's)."""
    log = topo.root / "pgbouncer.log"
    text = log.read_text(errors="replace") if log.exists() else ""
    reasons = Counter(f"{side} {why}" for side, why in _CLOSING.findall(text))
    return ", ".join(f"{why} x{n}" for why, n in sorted(reasons.items())) or "nothing"


def _served(load: Load, name: str) -> int:
    return sum(1 for o in load.outcomes if o.kind == "ok" and o.served_by == name)


def _table(runs: list[Run]) -> None:
    header = (
        f"{'fault':<18} {'runs':>4} {'requests':>8} {'ok':>6} {'503':>5} {'unknown':>7}"
        f" {'outage p50':>10} {'outage max':>10} {'rejoin':>8} {'budget/run':>10}"
    )
    print(header)
    print("-" * len(header))
    for fault in dict.fromkeys(r.fault for r in runs):
        rs = [r for r in runs if r.fault == fault]
        outs = [o for r in rs for o in r.outcomes]
        outages = [r.outage_s for r in rs]
        rejoins = [r.rejoin_s for r in rs if r.rejoin_s is not None]
        worst = max(outages)
        print(
            f"{fault:<18} {len(rs):>4} {len(outs):>8}"
            f" {sum(1 for o in outs if o.kind == 'ok'):>6}"
            f" {sum(1 for o in outs if o.status == 503):>5}"
            f" {sum(1 for o in outs if o.kind == 'unknown'):>7}"
            f" {statistics.median(outages):>9.2f}s {worst:>9.2f}s"
            f" {(f'{max(rejoins):.1f}s' if rejoins else '-'):>8}"
            f" {100 * worst / BUDGET_S:>9.2f}%"
        )


def _path_table(runs: list[Run]) -> None:
    """The worst write outage of each fault on each way to the primary."""
    header = f"{'outage by way':<18}" + "".join(f" {way:>15}" for way in PATHS.values())
    print(header)
    print("-" * len(header))
    for fault in dict.fromkeys(r.fault for r in runs):
        rs = [r for r in runs if r.fault == fault]
        cells = []
        for api in PATHS:
            seen = [r.by_path[api] for r in rs if api in r.by_path]
            cells.append(f"{max(seen):>14.2f}s" if seen else f"{'-':>15}")
        print(f"{fault:<18}" + "".join(f" {c}" for c in cells))


def main() -> int:
    cannot_cut = partition.available()
    if cannot_cut:
        print(f"[ha] no partition fault on this host: {cannot_cut}", flush=True)
    return run_in_topology(
        run,
        api_instances=3,
        with_pgbouncer=True,
        with_relay=True,
        with_partitions=cannot_cut is None,
    )


if __name__ == "__main__":
    sys.exit(main())
