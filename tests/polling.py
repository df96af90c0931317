"""The one poll for a state a test needs, synchronous and asynchronous: the standard library
only, so code that runs outside the suite's environment (the generated client's flows, the HA
harness) polls the same way as the tests."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any


def wait_until(
    check: Callable[[], Any], timeout: float = 30, every: float = 0.05, what: str | None = None
) -> Any:
    """Run `check` until it returns something truthy and return that; after `timeout` seconds
    fail, naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{what or 'condition'} not met within {timeout}s (last: {value!r})"
            )
        time.sleep(every)


async def poll(
    check: Callable[[], Awaitable[Any] | Any],
    timeout: float = 30,
    every: float = 0.05,
    what: str | None = None,
) -> Any:
    """`wait_until` in an event loop: `check` may be a plain or an async function."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{what or 'condition'} not met within {timeout}s (last: {value!r})"
            )
        await asyncio.sleep(every)
