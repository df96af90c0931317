"""The generic outbox: it knows no domain, promos schedule through it, notifications consume
it, and its lock by (topic, key) serialises scheduling with cancellation."""

from __future__ import annotations

import ast
import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from app.core import outbox
from app.core.db import libpq_url
from app.core.settings import Settings
from app.promos import events
from tests.helpers import wait_for

ROOT = Path(__file__).resolve().parents[2]
APP = ROOT / "app"
DOMAINS = ("auth", "books", "promos", "notifications", "segments", "console")


def _imports(path: Path) -> Iterator[str]:
    """Every module a file imports, at any depth (function-level imports included)."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module
            if node.module == "app":
                yield from (f"app.{alias.name}" for alias in node.names)


def _unit(module: str) -> str | None:
    """The top-level part of `app` a module belongs to (`app.promos.service` → `promos`)."""
    parts = module.split(".")
    return parts[1] if parts[0] == "app" and len(parts) > 1 else None


@pytest.mark.parametrize("name", ["outbox.py", "outbox_model.py"])
def test_the_outbox_imports_no_domain(name: str) -> None:
    imported = {_unit(m) for m in _imports(APP / "core" / name)}
    assert imported & set(DOMAINS) == set()


def test_promos_do_not_import_notifications() -> None:
    """Promos publish through the outbox; only notifications know what a start announces."""
    offenders = [
        str(path.relative_to(ROOT))
        for path in (APP / "promos").rglob("*.py")
        if any(_unit(m) == "notifications" for m in _imports(path))
    ]
    assert offenders == []


def test_dependencies_between_parts_of_the_app_point_one_way() -> None:
    """No import cycle between the app's packages and top-level modules (`app.cli`, the
    the composition layer `app.api`, the domains, core); every edge counts."""
    edges: dict[str, set[str]] = {}
    for path in APP.rglob("*.py"):
        parts = path.relative_to(APP).with_suffix("").parts
        source = parts[0]
        for module in _imports(path):
            target = _unit(module)
            if target is not None and target != source:
                edges.setdefault(source, set()).add(target)

    def cycle_from(start: str, node: str, seen: tuple[str, ...]) -> tuple[str, ...] | None:
        for target in sorted(edges.get(node, ())):
            if target == start:
                return (*seen, target)
            if target not in seen:
                found = cycle_from(start, target, (*seen, target))
                if found:
                    return found
        return None

    cycles = {" -> ".join(c) for s in edges if (c := cycle_from(s, s, (s,))) is not None}
    assert cycles == set()


# The lock by (topic, key) -----------------------------------------------------------------


async def _waiting_on_advisory_lock(pg: asyncpg.Connection, pid: int) -> bool:
    waiting: bool = await pg.fetchval(
        "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE pid = $1 AND locktype = 'advisory'"
        " AND NOT granted)",
        pid,
    )
    return waiting


async def _until_waiting(pg: asyncpg.Connection, pid: int, task: asyncio.Task[Any]) -> None:
    """Poll pg_locks until the backend waits on an advisory lock (the task must not finish)."""

    async def waiting() -> bool:
        assert not task.done(), "the second transaction did not wait for the key's lock"
        return await _waiting_on_advisory_lock(pg, pid)

    await wait_for(waiting, timeout=10, what=f"backend {pid} waiting on the key's lock")


async def _pid(session: AsyncSession) -> int:
    pid: int = await session.scalar(text("SELECT pg_backend_pid()"))
    return pid


async def _statuses(pg: asyncpg.Connection, topic: str, key: str) -> list[str]:
    rows = await pg.fetch(
        "SELECT status FROM outbox WHERE topic = $1 AND key = $2 ORDER BY id", topic, key
    )
    return [r["status"] for r in rows]


@pytest.fixture
async def pg(settings: Settings) -> AsyncIterator[asyncpg.Connection]:
    """An autocommit connection: it sees what the sessions commit, and their locks."""
    conn = await asyncpg.connect(libpq_url(settings.database_url or ""), statement_cache_size=0)
    try:
        yield conn
    finally:
        await conn.close()


async def test_cancelling_a_promo_waits_for_its_uncommitted_schedule_and_cancels_it(
    app: FastAPI, pg: asyncpg.Connection
) -> None:
    """An edit scheduling the promo's start and a cancel of the promo, at once: the cancel
    waits for the edit's key lock, then sees and cancels the job the edit inserted. Without
    the lock the cancel would find nothing pending and the job would stay behind."""
    promo_id = uuid.uuid4()
    later = await pg.fetchval("SELECT now() + interval '1 hour'")
    maker = app.state.db.sessionmaker
    async with maker() as editing, maker() as cancelling:
        await editing.begin()
        await events.schedule_started(editing, promo_id, later)
        await cancelling.begin()
        pid = await _pid(cancelling)
        cancel = asyncio.create_task(events.cancel_started(cancelling, promo_id))
        await _until_waiting(pg, pid, cancel)
        await editing.commit()
        assert await cancel == 1
        await cancelling.commit()
    assert await _statuses(pg, events.PROMO_STARTED, str(promo_id)) == ["cancelled"]


async def test_promos_schedule_under_the_generic_lock_by_key(
    app: FastAPI, pg: asyncpg.Connection
) -> None:
    """Whoever holds `outbox.lock(topic, key)` holds back the promo's scheduling: the worker
    side settles jobs under the same lock."""
    promo_id = uuid.uuid4()
    later = await pg.fetchval("SELECT now() + interval '1 hour'")
    maker = app.state.db.sessionmaker
    async with maker() as holder, maker() as editing:
        await holder.begin()
        await outbox.lock(holder, events.PROMO_STARTED, str(promo_id))
        await editing.begin()
        pid = await _pid(editing)
        schedule = asyncio.create_task(events.schedule_started(editing, promo_id, later))
        await _until_waiting(pg, pid, schedule)
        assert await _statuses(pg, events.PROMO_STARTED, str(promo_id)) == []
        await holder.commit()
        await schedule
        await editing.commit()
    assert await _statuses(pg, events.PROMO_STARTED, str(promo_id)) == ["pending"]
    await pg.execute(
        "UPDATE outbox SET status = 'cancelled' WHERE topic = $1 AND key = $2",
        events.PROMO_STARTED,
        str(promo_id),
    )


async def test_one_pending_job_per_topic_and_key_and_a_schedule_moves_it(
    app: FastAPI, pg: asyncpg.Connection
) -> None:
    """Scheduling again moves the pending job (and replaces its payload); the same key under
    another topic is another job."""
    key = str(uuid.uuid4())
    topic_a, topic_b = f"test.a.{key[:8]}", f"test.b.{key[:8]}"
    first, second = await pg.fetch(
        "SELECT now() + interval '1 hour' AS at UNION ALL SELECT now() + interval '2 hours'"
    )
    async with app.state.db.sessionmaker() as session, session.begin():
        job = await outbox.schedule(session, topic_a, key, payload={"n": 1}, run_at=first["at"])
        moved = await outbox.schedule(session, topic_a, key, payload={"n": 2}, run_at=second["at"])
        other = await outbox.schedule(session, topic_b, key, payload={}, run_at=first["at"])
    assert moved == job and other != job
    row = await pg.fetchrow("SELECT run_at, payload::text FROM outbox WHERE id = $1", job)
    assert row["run_at"] == second["at"] and row["payload"] == '{"n": 2}'
    async with app.state.db.sessionmaker() as session, session.begin():
        assert await outbox.cancel(session, topic_a, key) == 1
        assert await outbox.cancel(session, topic_a, key) == 0
        assert await outbox.cancel(session, topic_b, key) == 1
    assert await _statuses(pg, topic_a, key) == ["cancelled"]
