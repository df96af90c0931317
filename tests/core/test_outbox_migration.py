"""Revision 0008 moves the outbox from promo-specific keys (`promo.started:<id>`, locks on
`payload->>'promo_id'`) to a generic (topic, key); existing rows move with it, both ways."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from alembic import command

from app.core.db import libpq_url
from app.core.migrations import alembic_config
from app.core.settings import Settings


def _run(url: str, sql: str, *args: object) -> list[Any]:
    async def go() -> list[Any]:
        conn = await asyncpg.connect(url, statement_cache_size=0)
        try:
            return list(await conn.fetch(sql, *args))
        finally:
            await conn.close()

    return asyncio.run(go())


@pytest.fixture
def blank_database(settings: Settings) -> Iterator[str]:
    """An empty database of its own (migrated by the test), dropped afterwards."""
    server = libpq_url(settings.database_url or "")
    name = f"cf_outbox_mig_{uuid.uuid4().hex[:8]}"
    _run(server, f'CREATE DATABASE "{name}"')
    parts = urlsplit(server)
    try:
        yield urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))
    finally:
        _run(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _jobs(url: str) -> dict[str, tuple[str, str | None, str]]:
    rows = _run(url, "SELECT payload->>'name' AS name, topic, key, status FROM outbox")
    return {r["name"]: (r["topic"], r["key"], r["status"]) for r in rows}


def test_existing_jobs_move_to_the_generic_key_and_back(blank_database: str) -> None:
    url = blank_database
    config = alembic_config(url)
    command.upgrade(config, "0007")
    promo, other = str(uuid.uuid4()), str(uuid.uuid4())
    _run(
        url,
        """
        INSERT INTO outbox (topic, key, payload, status) VALUES
          ('promo.started', 'promo.started:' || $1, jsonb_build_object('promo_id', $1,
           'name', 'pending'), 'pending'),
          ('promo.started', 'promo.started:' || $1, jsonb_build_object('promo_id', $1,
           'name', 'done'), 'done'),
          ('promo.started', 'promo.started:' || $2, jsonb_build_object('promo_id', $2,
           'name', 'other'), 'running'),
          ('webhook.deliver', NULL, '{"name": "webhook", "ids": [1]}', 'pending')
        """,
        promo,
        other,
    )

    command.upgrade(config, "heads")
    assert _jobs(url) == {
        "pending": ("promo.started", promo, "pending"),
        "done": ("promo.started", promo, "done"),
        "other": ("promo.started", other, "running"),
        "webhook": ("webhook.deliver", None, "pending"),
    }
    # One pending job per (topic, key); the same key under another topic is another job.
    with pytest.raises(asyncpg.UniqueViolationError):
        _run(url, "INSERT INTO outbox (topic, key) VALUES ('promo.started', $1)", promo)
    _run(
        url, "INSERT INTO outbox (topic, key, payload) VALUES ('x', $1, '{\"name\": \"x\"}')", promo
    )

    command.downgrade(config, "0007")
    _run(url, "DELETE FROM outbox WHERE topic = 'x'")
    assert _jobs(url) == {
        "pending": ("promo.started", f"promo.started:{promo}", "pending"),
        "done": ("promo.started", f"promo.started:{promo}", "done"),
        "other": ("promo.started", f"promo.started:{other}", "running"),
        "webhook": ("webhook.deliver", None, "pending"),
    }
