"""Local users for the subjects of an external OIDC issuer, created on first sight."""

from __future__ import annotations

import asyncio
import uuid

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.auth.service import provision_external
from app.core.db import Database, apply_timeouts, create_engine
from app.core.security import Role
from app.core.settings import Settings

# A few at a time, so a burst of new subjects opens few connections.
_PROVISIONING_CONNECTIONS = 4


class ExternalUsers:
    """Creates the local users of new external subjects on connections of their own,
    outside the pool: a request may already hold its pooled connection when its caller is
    resolved, and once every pooled connection is held by such a request, each would wait
    for a second one until the pool timeout (503). Each subject once per process."""

    def __init__(self, settings: Settings, db: Database) -> None:
        self._db = db
        self._settings = settings
        self._engine: AsyncEngine | None = None
        self._slots = asyncio.Semaphore(_PROVISIONING_CONNECTIONS)
        self._known: dict[tuple[str, Role], uuid.UUID] = {}

    async def user_id(self, sub: str, email: str | None, role: Role) -> uuid.UUID:
        known = self._known.get((sub, role))
        if known is not None:
            return known
        async with self._slots, self._sessions()() as session, session.begin():
            if self._db.timeouts_per_transaction:
                await apply_timeouts(session, self._db)
            user = await provision_external(session, sub, email, role)
        self._known[(sub, role)] = user.id
        return user.id

    def _sessions(self) -> async_sessionmaker[AsyncSession]:
        if self._engine is None:  # only services that accept external tokens need it
            self._engine = create_engine(self._settings, pooled=False)
        return async_sessionmaker(self._engine, expire_on_commit=False, autoflush=False)

    async def dispose(self) -> None:
        if self._engine is not None:
            await self._engine.dispose()
