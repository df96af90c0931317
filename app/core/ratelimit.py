"""Rate limits with the `limits` library (moving window, in-process).

State is per process: with N workers a client can make up to N times the configured rate.
That is documented in the README; the limits exist to blunt abuse, not to meter billing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from math import ceil

from fastapi import Request
from limits import RateLimitItem, parse
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import MovingWindowRateLimiter

from app.core.problems import RateLimited


@dataclass
class RateLimits:
    enabled: bool
    auth: RateLimitItem
    assign: RateLimitItem
    _limiter: MovingWindowRateLimiter = field(
        default_factory=lambda: MovingWindowRateLimiter(MemoryStorage())
    )

    @classmethod
    def build(cls, enabled: bool, auth: str, assign: str) -> RateLimits:
        return cls(enabled=enabled, auth=parse(auth), assign=parse(assign))

    async def hit(self, item: RateLimitItem, *identifiers: object) -> None:
        """Count one hit for the identifiers (as strings); over the limit raises 429 with
        Retry-After."""
        if not self.enabled:
            return
        keys = [str(i) for i in identifiers]
        if await self._limiter.hit(item, *keys):
            return
        stats = await self._limiter.get_window_stats(item, *keys)
        retry = max(1, ceil(stats.reset_time - time.time()))
        raise RateLimited(
            f"Too many requests; limit is {item}.", headers={"Retry-After": str(retry)}
        )


def client_ip(request: Request) -> str:
    return request.client.host if request.client else "unknown"
