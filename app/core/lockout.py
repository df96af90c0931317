"""Guessing lockout: failed lookups counted per key (`user:<id>`, `ip:<address>`) in
PostgreSQL, so every instance shares the count; more than `max_failures` in a window
(opened by a key's first failure) locks the key until that window passes.

Only failures cost anything. A failure is written in a statement of its own after the
request's transaction rolled back (one upsert for the caller's keys, in a stable order), and
its answer says at once whether the key is now locked. Successes never write: they consult
the locked keys this process holds, which it reads again from PostgreSQL (the source of
truth) at most every `refresh_seconds`, and to which it adds every lock its own failures
hit. So a key locked through another instance is refused here within `refresh_seconds`,
and a failed guess is refused everywhere at once. Remaining times come from the database
clock (`clock_timestamp()`), never this process's.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import asyncpg

from app.core.clientip import Network
from app.core.outbox import Conn
from app.core.problems import ProblemError
from app.core.transaction import Acquire


class TooManyFailures(ProblemError):
    status, slug, title = 429, "too-many-failures", "Too many failures"


# The wall clock of the database (`clock_timestamp()`), read once per statement: the row's
# `excluded.window_started_at` is that reading.
_FAILED = """
INSERT INTO lockouts AS l (key, window_started_at, failures)
SELECT k, t.now, 1 FROM unnest($1::text[]) AS k, (SELECT clock_timestamp() AS now) AS t
ON CONFLICT (key) DO UPDATE SET
    window_started_at = CASE WHEN l.window_started_at + $2 * interval '1 second'
                                  <= excluded.window_started_at
                             THEN excluded.window_started_at ELSE l.window_started_at END,
    failures = CASE WHEN l.window_started_at + $2 * interval '1 second'
                         <= excluded.window_started_at
                    THEN 1 ELSE l.failures + 1 END,
    locked_until = CASE WHEN l.window_started_at + $2 * interval '1 second'
                             <= excluded.window_started_at THEN NULL
                        WHEN l.failures + 1 > $3
                        THEN l.window_started_at + $2 * interval '1 second'
                        ELSE l.locked_until END
RETURNING key, extract(epoch FROM locked_until - clock_timestamp())::float8 AS seconds_left
"""

_LOCKED = """
SELECT key, extract(epoch FROM locked_until - t.now)::float8 AS seconds_left
FROM lockouts, (SELECT clock_timestamp() AS now) AS t WHERE locked_until > t.now
"""


@dataclass
class Lockouts:
    """The lockout policy and this process's view of the locked keys."""

    enabled: bool
    max_failures: int
    window_seconds: int
    refresh_seconds: float
    # Peers whose X-Forwarded-For names the client (core/clientip.py).
    trusted_proxies: tuple[Network, ...] = ()
    _locked: dict[str, float] = field(default_factory=dict)  # key -> monotonic deadline
    _loaded_at: float = float("-inf")

    def forget(self, key: str | None = None) -> None:
        """Drop one key (an admin cleared it) or, with none, everything this process holds."""
        if key is None:
            self._locked.clear()
            self._loaded_at = float("-inf")
        else:
            self._locked.pop(key, None)

    async def refuse_locked(self, keys: Sequence[str], acquire: Acquire) -> None:
        """429 `too-many-failures` if any key is locked; no query while the view is fresh."""
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._loaded_at > self.refresh_seconds:
            async with acquire() as conn:
                rows = await conn.fetch(_LOCKED)
            now = time.monotonic()
            self._locked = {r["key"]: now + r["seconds_left"] for r in rows}
            self._loaded_at = now
        left = max((self._locked.get(k, now) - now for k in keys), default=0.0)
        if left > 0:
            raise _refusal(left)

    async def failed(self, keys: Sequence[str], acquire: Acquire) -> None:
        """Count one failure for each key; 429 if that locked any of them."""
        if not self.enabled:
            return
        async with acquire() as conn:
            rows = await conn.fetch(_FAILED, sorted(keys), self.window_seconds, self.max_failures)
        now = time.monotonic()
        left = 0.0
        for r in rows:
            if r["seconds_left"] is not None and r["seconds_left"] > 0:
                self._locked[r["key"]] = now + r["seconds_left"]
                left = max(left, r["seconds_left"])
        if left > 0:
            raise _refusal(left)


def lend(conn: asyncpg.Connection) -> Acquire:
    """An `Acquire` that hands out this very connection (counting inside its transaction)."""

    @asynccontextmanager
    async def acquire() -> AsyncIterator[asyncpg.Connection]:
        yield conn

    return acquire


def _refusal(seconds_left: float) -> TooManyFailures:
    retry = max(1, math.ceil(round(seconds_left, 3)))  # no 601 from float noise
    return TooManyFailures(
        f"Too many failed attempts; try again in {retry} seconds.",
        headers={"Retry-After": str(retry)},
    )


@dataclass(frozen=True, slots=True)
class GuessWatch:
    """One request's keys and the way to the database, for `watch`."""

    lockouts: Lockouts
    keys: tuple[str, ...]
    acquire: Acquire

    @asynccontextmanager
    async def watch(self, *counted: type[BaseException]) -> AsyncIterator[None]:
        """Refuse a locked caller; count a failure of the `counted` kinds (and answer 429
        instead once it locks the caller)."""
        await self.lockouts.refuse_locked(self.keys, self.acquire)
        try:
            yield
        except counted as exc:
            await self.lockouts.failed(self.keys, self.acquire)
            raise exc


_PURGE = """
WITH doomed AS MATERIALIZED (
    SELECT key FROM lockouts
    WHERE window_started_at < clock_timestamp() - $1 * interval '1 second'
    ORDER BY window_started_at
    LIMIT $2
)
DELETE FROM lockouts l USING doomed d
WHERE l.key = d.key AND l.window_started_at < clock_timestamp() - $1 * interval '1 second'
"""


async def purge_expired(conn: Conn, window_seconds: int, limit: int) -> int:
    """Delete up to `limit` keys whose window has passed (their next failure would start
    afresh anyway); returns how many went."""
    status: str = await conn.execute(_PURGE, window_seconds, limit)
    return int(status.rsplit(" ", 1)[-1])
