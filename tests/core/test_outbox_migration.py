"""Revision 0008 moves the outbox from promo-specific keys (`promo.started:<id>`, locks on
`payload->>'promo_id'`) to a generic (topic, key); existing rows move with it, both ways."""

from __future__ import annotations

import uuid

import asyncpg
import pytest
from alembic import command

from app.core.migrations import alembic_config
from tests.helpers import run_sql


def _jobs(url: str) -> dict[str, tuple[str, str | None, str]]:
    rows = run_sql(url, "SELECT payload->>'name' AS name, topic, key, status FROM outbox")
    return {r["name"]: (r["topic"], r["key"], r["status"]) for r in rows}


def test_existing_jobs_move_to_the_generic_key_and_back(blank_database: str) -> None:
    url = blank_database
    config = alembic_config(url)
    command.upgrade(config, "0007")
    promo, other = str(uuid.uuid4()), str(uuid.uuid4())
    run_sql(
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
        run_sql(url, "INSERT INTO outbox (topic, key) VALUES ('promo.started', $1)", promo)
    run_sql(
        url, "INSERT INTO outbox (topic, key, payload) VALUES ('x', $1, '{\"name\": \"x\"}')", promo
    )

    command.downgrade(config, "0007")
    run_sql(url, "DELETE FROM outbox WHERE topic = 'x'")
    assert _jobs(url) == {
        "pending": ("promo.started", f"promo.started:{promo}", "pending"),
        "done": ("promo.started", f"promo.started:{promo}", "done"),
        "other": ("promo.started", f"promo.started:{other}", "running"),
        "webhook": ("webhook.deliver", None, "pending"),
    }
