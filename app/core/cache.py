"""A value read from PostgreSQL (the source of truth) and kept in the process, read again
when older than its refresh interval or when this process marked it stale."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import asyncpg

T = TypeVar("T")


class Cached(Generic[T]):
    def __init__(
        self,
        load: Callable[[asyncpg.Connection], Awaitable[T]],
        initial: T,
        refresh_seconds: float,
    ) -> None:
        self._load = load
        self._value = initial
        self.refresh_seconds = refresh_seconds
        self._loaded_at = float("-inf")

    def stale(self) -> None:
        """Read it again at the next use (this process just changed it)."""
        self._loaded_at = float("-inf")

    async def get(self, conn: asyncpg.Connection) -> T:
        """The value; reads it on `conn` only when it is stale."""
        if time.monotonic() - self._loaded_at > self.refresh_seconds:
            self._value = await self._load(conn)
            self._loaded_at = time.monotonic()
        return self._value
