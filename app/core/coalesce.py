"""Coalescing concurrent requests on one scarce pool into one transaction, the way databases
do group commit.

Requests for the same key (a book, a promo) join that key's lane. When the lane is idle,
the request that arrives leads a batch of one at once: a lone request waits for nothing.
While a batch is in flight, the requests that arrive queue; when it ends, the first of them
leads the next batch with up to `max_batch` of the queue, in arrival order. No timer: a
batch goes as soon as the one before it has committed.

The leader runs the batch with its own request's resources (its transaction, so its
connection, timeouts and failover handling), in a task of its own that the leader's
cancellation does not cut: the others in the batch still get their answers. `run` returns
one outcome per item, in order: a value, or the exception that item's request raises. An
exception out of `run` itself (the transaction failed, the outcome of its commit is
unknown) is every item's answer.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")

Run = Callable[[Sequence[Item]], Awaitable[Sequence["Result | BaseException"]]]


def _future() -> asyncio.Future[Any]:
    return asyncio.get_running_loop().create_future()


@dataclass(slots=True)
class _Waiter(Generic[Item, Result]):
    item: Item
    run: Run[Item, Result]
    answer: asyncio.Future[Result] = field(default_factory=_future)
    # Set when this waiter is to lead: the batch it runs (itself first).
    lead: asyncio.Future[list[_Waiter[Item, Result]]] = field(default_factory=_future)


@dataclass(slots=True)
class _Lane(Generic[Item, Result]):
    queue: deque[_Waiter[Item, Result]] = field(default_factory=deque)
    busy: bool = False


class Coalescer(Generic[Item, Result]):
    """Per-process batching of concurrent requests by key; see the module docstring."""

    def __init__(self, max_batch: int, observe: Callable[[int], None] | None = None) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.max_batch = max_batch
        self._observe = observe
        self._lanes: dict[Hashable, _Lane[Item, Result]] = {}
        self._running: set[asyncio.Task[None]] = set()

    async def submit(self, key: Hashable, item: Item, run: Run[Item, Result]) -> Result:
        """This item's outcome, from a batch of the key's concurrent items (maybe only it).
        `run` is used if this request leads its batch."""
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = _Lane()
        waiter: _Waiter[Item, Result] = _Waiter(item, run)
        lane.queue.append(waiter)
        if not lane.busy:
            self._start_next(key, lane)
        try:
            batch = await _first(waiter.lead, waiter.answer)
        except asyncio.CancelledError:
            if waiter in lane.queue:  # still waiting its turn: it leaves the queue
                lane.queue.remove(waiter)
            elif waiter.lead.done():  # chosen to lead: the batch runs all the same
                self._spawn(key, lane, waiter.lead.result())
            raise
        if batch is not None:
            await asyncio.shield(self._spawn(key, lane, batch))
        return await waiter.answer

    def _spawn(
        self, key: Hashable, lane: _Lane[Item, Result], batch: list[_Waiter[Item, Result]]
    ) -> asyncio.Task[None]:
        task = asyncio.ensure_future(self._run(key, lane, batch))
        self._running.add(task)  # a reference until it ends, as asyncio asks
        task.add_done_callback(self._running.discard)
        return task

    def _start_next(self, key: Hashable, lane: _Lane[Item, Result]) -> None:
        """Hand the queue's head the next batch, or mark the lane idle (and forget it)."""
        if not lane.queue:
            lane.busy = False
            if self._lanes.get(key) is lane:
                del self._lanes[key]
            return
        lane.busy = True
        batch = [lane.queue.popleft() for _ in range(min(self.max_batch, len(lane.queue)))]
        batch[0].lead.set_result(batch)

    async def _run(
        self, key: Hashable, lane: _Lane[Item, Result], batch: list[_Waiter[Item, Result]]
    ) -> None:
        if self._observe is not None:
            self._observe(len(batch))
        try:
            outcomes = await batch[0].run([w.item for w in batch])
            if len(outcomes) != len(batch):
                raise RuntimeError(f"a batch of {len(batch)} got {len(outcomes)} outcomes")
        except BaseException as exc:  # every item's answer, raised by each
            outcomes = [exc] * len(batch)
        finally:
            self._start_next(key, lane)
        for waiter, outcome in zip(batch, outcomes, strict=True):
            if isinstance(outcome, asyncio.CancelledError):
                waiter.answer.cancel()
            elif isinstance(outcome, BaseException):
                # Each request raises its own copy: one exception object raised in several
                # tasks would collect all their tracebacks.
                waiter.answer.set_exception(_own_copy(outcome))
            else:
                waiter.answer.set_result(outcome)


async def _first(
    lead: asyncio.Future[list[_Waiter[Item, Result]]], answer: asyncio.Future[Result]
) -> list[_Waiter[Item, Result]] | None:
    """The batch to lead, or None once the answer is in (another request led)."""
    await asyncio.wait((lead, answer), return_when=asyncio.FIRST_COMPLETED)
    return lead.result() if lead.done() else None


def _own_copy(exc: BaseException) -> BaseException:
    """The same exception as a new object (its class, arguments and attributes), without
    calling `__init__`, whose signature may differ from `args`."""
    try:
        twin = type(exc).__new__(type(exc), *exc.args)
        twin.__dict__.update(vars(exc))
    except Exception:  # one that cannot be copied is raised as is
        return exc
    twin.__cause__, twin.__context__ = exc.__cause__, exc.__context__
    return twin
