"""The delayed-standby faults of `make test-ha`: the replication traffic of one quorum
standby, or of both, held back by 50 ms each way, then by 200 ms, for a phase each, under
load, through the replication relay (`tests/ha/relay.py`; netem's job on a real link). What
is measured, before and during each phase: the latency of the load's acknowledged writes
(the client's view, through the API) and of one-row commits made one after another on the
primary (the commit alone), and how far each delayed standby's flushed WAL trails the
primary at the end of the phase. The delay is removed in `finally`, and lapses by itself in
the relay shortly after the phase should have ended; the caller checks that the leader
stayed and that nothing acknowledged was lost."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

import asyncpg

from tests.ha.load import Load
from tests.ha.topology import Node, Topology, poll_until, relay_command

DELAYS_MS = (50, 200)
# A phase (no delay, the reference; then each delay) lasts until it holds this many of the
# probe's commits and of the load's acknowledged writes, started and ended within it: enough
# for a p50 and a p99 at every delay (at 200 ms each way on both standbys, about 8 s).
PHASE_COMMITS = 20
PHASE_WRITES = 300
PHASE_TIMEOUT_S = 90


def percentiles(values: list[float]) -> tuple[float, float]:
    """(p50, p99), as the rest of the run computes them; (0, 0) for no values."""
    if not values:
        return 0.0, 0.0
    ordered = sorted(values)
    return ordered[len(ordered) // 2], ordered[int(len(ordered) * 0.99)]


@dataclass
class Phase:
    label: str
    start: float
    end: float = 0.0
    lag_bytes: dict[str, int] = field(default_factory=dict)  # delayed standbys, at the end


@dataclass
class CommitProbe:
    """One-row INSERTs committed one after another on the primary (synchronous_commit on,
    so each waits for a quorum standby), each timed."""

    url: str
    samples: list[tuple[float, float]] = field(default_factory=list)  # (ended, ms)
    conn: asyncpg.Connection | None = None
    task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> CommitProbe:
        self.conn = await asyncpg.connect(self.url)
        await self.conn.execute("CREATE TABLE IF NOT EXISTS ha_delay_probe (n int)")
        self.task = asyncio.create_task(self._run())
        return self

    async def _run(self) -> None:
        assert self.conn is not None
        n = 0
        while True:
            t = time.perf_counter()
            await self.conn.execute("INSERT INTO ha_delay_probe VALUES ($1)", n)
            self.samples.append((time.monotonic(), (time.perf_counter() - t) * 1000))
            n += 1  # one connection, one commit after another: a trickle beside the load

    async def __aexit__(self, *exc: object) -> None:
        assert self.conn is not None and self.task is not None
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task  # a probe that failed raises here
        with contextlib.suppress(asyncpg.PostgresError, OSError):
            await self.conn.execute("DROP TABLE ha_delay_probe")
        await self.conn.close()

    def during(self, phase: Phase) -> list[float]:
        end = phase.end or float("inf")
        return [ms for ended, ms in self.samples if phase.start <= ended < end]


def _acknowledged(load: Load, phase: Phase) -> list[float]:
    """Milliseconds of the load's writes acknowledged within the phase."""
    end = phase.end or float("inf")
    return [
        1000 * (o.ended - o.started)
        for o in load.outcomes
        if o.kind == "ok" and phase.start <= o.started <= o.ended < end
    ]


async def _run_phase(phase: Phase, probe: CommitProbe, load: Load) -> None:
    """Until the phase holds enough commits and writes to measure; then it ends."""

    async def enough() -> bool:
        return (
            len(probe.during(phase)) >= PHASE_COMMITS
            and len(_acknowledged(load, phase)) >= PHASE_WRITES
        )

    await poll_until(f"{phase.label}: enough commits and writes", enough, PHASE_TIMEOUT_S)
    phase.end = time.monotonic()


async def quorum_standbys(leader: Node) -> list[str]:
    """The standbys streaming from the leader that can confirm its commits."""
    conn = await asyncpg.connect(leader.url)
    try:
        rows = await conn.fetch(
            "SELECT application_name FROM pg_stat_replication"
            " WHERE state = 'streaming' AND sync_state IN ('sync', 'quorum')"
            " ORDER BY application_name"
        )
        return [r["application_name"] for r in rows]
    finally:
        await conn.close()


async def _flush_lag(leader: Node, names: list[str]) -> dict[str, int]:
    conn = await asyncpg.connect(leader.url)
    try:
        rows = await conn.fetch(
            "SELECT application_name AS name,"
            " pg_wal_lsn_diff(pg_current_wal_lsn(), flush_lsn)::bigint AS lag"
            " FROM pg_stat_replication WHERE application_name = ANY($1::text[])",
            names,
        )
        return {r["name"]: r["lag"] for r in rows}
    finally:
        await conn.close()


async def _set_delay(topo: Topology, names: list[str], ms: int) -> None:
    for name in names:
        # Lapses by itself a little after the phase, should this process die meanwhile.
        answer = await asyncio.to_thread(
            relay_command, topo, f"delay {name} {ms} {PHASE_TIMEOUT_S + 10}"
        )
        word, _, conns = answer.partition(" ")
        assert word == "ok" and int(conns) >= 1, f"{name} streams outside the relay: {answer}"


async def delayed_standbys(topo: Topology, leader: Node, names: list[str], load: Load) -> str:
    """Run the phases on `names` (standbys of `leader`); one line of figures."""
    phases = [Phase("no delay", time.monotonic())]
    async with CommitProbe(leader.url) as probe:
        await _run_phase(phases[0], probe, load)
        try:
            for ms in DELAYS_MS:
                await _set_delay(topo, names, ms)
                phase = Phase(f"+{ms} ms each way", time.monotonic())
                phases.append(phase)
                await _run_phase(phase, probe, load)
                phase.lag_bytes = await _flush_lag(leader, names)
        finally:
            await asyncio.to_thread(relay_command, topo, "clear")
    figures = []
    for phase in phases:
        writes = _acknowledged(load, phase)
        w50, w99 = percentiles(writes)
        c50, c99 = percentiles(probe.during(phase))
        lag = ", ".join(f"{n} {b / 1024:.0f} kB behind" for n, b in phase.lag_bytes.items())
        figures.append(
            f"{phase.label}: {len(writes)} writes acknowledged in"
            f" {phase.end - phase.start:.1f} s, p50 {w50:.0f} ms,"
            f" p99 {w99:.0f} ms; commit p50 {c50:.1f} ms, p99 {c99:.1f} ms"
            + (f"; {lag}" if lag else "")
        )
    return f"{'+'.join(names)} delayed: " + " | ".join(figures)
