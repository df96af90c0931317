"""Live stream (Server-Sent Events) of a user's new notifications.

Each fan-out batch NOTIFYs `user_<id without dashes>` for every user it notified. A process
keeps ONE direct connection that LISTENs on the channels of its connected users (a channel
while at least one stream of that user is open). A wake-up only says "look": the stream
reads the inbox for ids above the last one it sent, so replay after a reconnect
(`Last-Event-ID`) and live delivery are the same query, and a missed NOTIFY (connection
lost) costs at most one heartbeat interval, after which the stream looks anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import structlog

from app.core.db import Database, libpq_url
from app.core.problems import problem_for_database_error
from app.notifications import service

log = structlog.get_logger(__name__)


def channel_for(user_id: uuid.UUID) -> str:
    return f"user_{user_id.hex}"


class NotificationHub:
    """Per-process LISTEN multiplexer; the connection lives while anyone listens."""

    def __init__(self, url: str) -> None:
        self.url = libpq_url(url)
        self._conn: asyncpg.Connection | None = None
        self._subs: dict[str, set[asyncio.Event]] = {}
        self._lock = asyncio.Lock()

    def _dispatch(self, _conn: object, _pid: object, channel: str, _payload: object) -> None:
        for event in self._subs.get(channel, ()):
            event.set()

    def _lost(self, _conn: object) -> None:
        self._conn = None
        for events in self._subs.values():
            for event in events:
                event.set()

    async def _connect(self) -> None:
        if self._conn is not None and not self._conn.is_closed():
            return
        conn = await asyncpg.connect(
            self.url, server_settings={"application_name": "couponflash-stream"}
        )
        conn.add_termination_listener(self._lost)
        for channel in self._subs:
            await conn.add_listener(channel, self._dispatch)
        self._conn = conn

    async def ensure(self) -> bool:
        """Reconnect if the connection was lost; False while the database is away."""
        if self._conn is not None and not self._conn.is_closed():
            return True
        async with self._lock:
            try:
                await self._connect()
                return True
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("stream_listen_failed", error=f"{type(exc).__name__}: {exc}")
                return False

    async def subscribe(self, user_id: uuid.UUID) -> asyncio.Event:
        channel = channel_for(user_id)
        event = asyncio.Event()
        async with self._lock:
            subs = self._subs.setdefault(channel, set())
            subs.add(event)
            try:
                await self._connect()
                if len(subs) == 1 and self._conn is not None:
                    await self._conn.add_listener(channel, self._dispatch)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("stream_listen_failed", error=f"{type(exc).__name__}: {exc}")
        return event

    async def unsubscribe(self, user_id: uuid.UUID, event: asyncio.Event) -> None:
        channel = channel_for(user_id)
        async with self._lock:
            subs = self._subs.get(channel)
            if subs is None:
                return
            subs.discard(event)
            if subs:
                return
            del self._subs[channel]
            conn = self._conn
            if conn is None or conn.is_closed():
                return
            with contextlib.suppress(Exception):
                if self._subs:
                    await conn.remove_listener(channel, self._dispatch)
                else:
                    self._conn = None
                    await asyncio.wait_for(conn.close(), timeout=2)

    async def close(self) -> None:
        async with self._lock:
            conn, self._conn = self._conn, None
            self._subs.clear()
        if conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), timeout=2)


async def notification_events(
    db: Database,
    hub: NotificationHub,
    user_id: uuid.UUID,
    last_event_id: int | None,
    heartbeat_s: float,
    is_disconnected: Callable[[], Any],
) -> AsyncIterator[dict[str, str]]:
    """SSE events (`id` = notification id, `event: notification`, `data` = JSON). The
    database going away mid-stream (a failover) ends the stream: the client reconnects
    with `Last-Event-ID`, gets 503 + `Retry-After` until a primary answers, then the
    notifications it missed."""
    event = await hub.subscribe(user_id)
    try:
        async with db.sessionmaker() as session, session.begin():
            after = (
                last_event_id
                if last_event_id is not None
                else await service.latest_id(session, user_id)
            )
        yield {"event": "ready", "data": '{"after": %d}' % after}  # noqa: UP031
        while True:
            event.clear()
            try:
                async with db.sessionmaker() as session, session.begin():
                    items = await service.since(session, user_id, after)
            except Exception as exc:
                if problem_for_database_error(exc) is None:
                    raise
                log.warning("stream_database_unavailable", error=type(exc).__name__)
                return
            for item in items:
                after = item.id
                yield {"id": str(item.id), "event": "notification", "data": item.model_dump_json()}
            if len(items) == 100:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), timeout=heartbeat_s)
            if await is_disconnected():
                return
            await hub.ensure()
    finally:
        await asyncio.shield(hub.unsubscribe(user_id, event))
