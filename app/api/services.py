"""`Services`: what request handlers use, built once when the app starts, from one
`Settings`, and handed to each request in the lifespan's state."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from starlette.requests import HTTPConnection

from app.core.cache import Cached
from app.core.coalesce import Coalescer
from app.core.db import Database
from app.core.lockout import Lockouts
from app.core.ratelimit import RateLimits
from app.core.security import ExternalUsers, TokenService
from app.core.settings import Settings

STATE_KEY = "services"


@dataclass(frozen=True, slots=True)
class Services:
    settings: Settings
    db: Database
    tokens: TokenService
    rate_limits: RateLimits
    external_users: ExternalUsers
    migration_heads: frozenset[str]
    # Claimed checksum prefixes (app/books/checksum.py), longest first.
    checksum_prefixes: Cached[tuple[str, ...]]
    lockouts: Lockouts
    # Batches of concurrent random assigns (by book) and reserves (by promo); None when
    # coalescing is off.
    assign_batches: Coalescer[Any, Any] | None = None
    reserve_batches: Coalescer[Any, Any] | None = None


def services_of(connection: HTTPConnection) -> Services:
    """The services the lifespan handed to this request (its state)."""
    services: Services = connection.scope["state"][STATE_KEY]
    return services
