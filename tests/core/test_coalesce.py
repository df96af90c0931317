"""The coalescer's queueing rules, with batches that run in the event loop: a lone request
goes at once, concurrent ones queue behind the batch in flight and go together in arrival
order, capped; every request gets its own outcome; cancellation never strands a lane. The
database side of coalescing is tested with real requests in tests/books/test_assign_coalesced.py."""

from __future__ import annotations

import asyncio
from collections.abc import Hashable, Sequence
from typing import Any

import pytest

from app.core.coalesce import Coalescer
from tests.helpers import wait_for


class Recorder:
    """A batch runner that records each batch and holds it until released."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.started = asyncio.Event()

    async def run(self, items: Sequence[int]) -> list[int | BaseException]:
        self.batches.append(list(items))
        self.started.set()
        await self.gate.wait()
        return [ValueError(f"odd {i}") if i % 2 else i * 10 for i in items]


async def _queued(coalescer: Coalescer[int, int], key: str, n: int) -> None:
    """Wait until `n` requests of `key` wait their turn behind the batch in flight."""

    def queued() -> bool:
        lane = coalescer._lanes.get(key)
        return lane is not None and len(lane.queue) == n

    await wait_for(queued, timeout=5, every=0.001, what=f"{n} requests queued on {key}")


async def test_a_lone_request_is_a_batch_of_one_and_waits_for_nothing() -> None:
    sizes: list[int] = []
    coalescer: Coalescer[int, int] = Coalescer(8, sizes.append)
    recorder = Recorder()
    assert await coalescer.submit("k", 2, recorder.run) == 20
    assert recorder.batches == [[2]] and sizes == [1]
    assert not coalescer._lanes  # an idle lane is forgotten


async def test_requests_during_a_batch_go_together_in_arrival_order_capped() -> None:
    coalescer: Coalescer[int, int] = Coalescer(3)
    recorder = Recorder()
    recorder.gate.clear()
    first = asyncio.ensure_future(coalescer.submit("k", 0, recorder.run))
    await recorder.started.wait()
    rest = [asyncio.ensure_future(coalescer.submit("k", i, recorder.run)) for i in range(2, 16, 2)]
    other = asyncio.ensure_future(coalescer.submit("other", 100, recorder.run))
    await _queued(coalescer, "k", 7)
    await wait_for(lambda: [100] in recorder.batches, timeout=5, every=0.001)
    recorder.gate.set()
    assert await first == 0
    assert [await r for r in rest] == list(range(20, 160, 20))
    assert await other == 1000
    assert recorder.batches == [[0], [100], [2, 4, 6], [8, 10, 12], [14]]


async def test_each_request_gets_its_own_outcome_and_a_failed_batch_fails_them_all() -> None:
    coalescer: Coalescer[int, int] = Coalescer(8)
    recorder = Recorder()
    recorder.gate.clear()
    blocker = asyncio.ensure_future(coalescer.submit("k", 0, recorder.run))
    await recorder.started.wait()
    mixed = [asyncio.ensure_future(coalescer.submit("k", i, recorder.run)) for i in (1, 2, 3)]
    await _queued(coalescer, "k", 3)
    recorder.gate.set()
    await blocker
    outcomes = await asyncio.gather(*mixed, return_exceptions=True)
    assert outcomes[1] == 20
    first, third = outcomes[0], outcomes[2]
    assert isinstance(first, ValueError) and str(first) == "odd 1"
    assert isinstance(third, ValueError) and str(third) == "odd 3"

    async def broken(items: Sequence[int]) -> list[int | BaseException]:
        raise RuntimeError("the transaction failed")

    failed = await asyncio.gather(
        *[coalescer.submit("k", i, broken) for i in range(4)], return_exceptions=True
    )
    assert all(isinstance(f, RuntimeError) for f in failed)
    assert len({id(f) for f in failed}) == 4  # each request raises its own copy


async def test_a_cancelled_leader_still_answers_its_batch() -> None:
    coalescer: Coalescer[int, int] = Coalescer(8)
    recorder = Recorder()
    recorder.gate.clear()
    leader = asyncio.ensure_future(coalescer.submit("k", 0, recorder.run))
    await recorder.started.wait()
    followers = [asyncio.ensure_future(coalescer.submit("k", i, recorder.run)) for i in (2, 4)]
    await _queued(coalescer, "k", 2)
    leader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leader
    recorder.gate.set()
    assert [await f for f in followers] == [20, 40]
    assert recorder.batches == [[0], [2, 4]]


async def test_a_request_cancelled_in_the_queue_leaves_it() -> None:
    coalescer: Coalescer[int, int] = Coalescer(8)
    recorder = Recorder()
    recorder.gate.clear()
    blocker = asyncio.ensure_future(coalescer.submit("k", 0, recorder.run))
    await recorder.started.wait()
    gone = asyncio.ensure_future(coalescer.submit("k", 2, recorder.run))
    stays = asyncio.ensure_future(coalescer.submit("k", 4, recorder.run))
    await _queued(coalescer, "k", 2)
    gone.cancel()
    await _queued(coalescer, "k", 1)
    recorder.gate.set()
    assert await blocker == 0 and await stays == 40
    assert recorder.batches == [[0], [4]]
    assert gone.cancelled()


class CancelsTheNextLeader(Coalescer[int, int]):
    """Cancels `victim` the moment the lane hands it a batch, before its task can run it."""

    victim: asyncio.Future[int] | None = None

    def _start_next(self, key: Hashable, lane: Any) -> None:
        handed = bool(lane.queue)
        super()._start_next(key, lane)
        if handed and self.victim is not None:
            self.victim.cancel()
            self.victim = None


async def test_a_leader_cancelled_before_its_batch_starts_still_runs_it() -> None:
    coalescer = CancelsTheNextLeader(8)
    recorder = Recorder()
    recorder.gate.clear()
    blocker = asyncio.ensure_future(coalescer.submit("k", 0, recorder.run))
    await recorder.started.wait()
    chosen = asyncio.ensure_future(coalescer.submit("k", 2, recorder.run))
    follower = asyncio.ensure_future(coalescer.submit("k", 4, recorder.run))
    await _queued(coalescer, "k", 2)
    coalescer.victim = chosen
    recorder.gate.set()
    assert await blocker == 0
    with pytest.raises(asyncio.CancelledError):
        await chosen
    async with asyncio.timeout(5):  # a stranded lane would never answer
        assert await follower == 40
    assert recorder.batches == [[0], [2, 4]]
    assert not coalescer._lanes
