"""The worker's housekeeping deletes rows past their retention, and only those: expired
idempotency keys, finished outbox jobs, audiences of finished fan-outs; at most a batch of
each per round, oldest first."""

from __future__ import annotations

import uuid

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from app.core import idempotency, outbox
from app.notifications import fanout
from app.notifications.worker import WorkerConfig, purge

DAY_S = 86_400.0


async def _raw(conn: AsyncConnection):  # type: ignore[no-untyped-def]
    return (await conn.get_raw_connection()).driver_connection


async def test_expired_idempotency_keys_go_in_bounded_rounds_oldest_first(
    conn: AsyncConnection,
) -> None:
    owner = uuid.uuid4()
    await conn.execute(
        text(
            "INSERT INTO idempotency_keys (user_id, route, key, request_hash, status_code,"
            " created_at) SELECT CAST(:u AS uuid), 'POST /x', 'k' || g, 'h', 201,"
            " now() - make_interval(hours => 24 + g) FROM generate_series(1, 7) AS g"
            " UNION ALL SELECT CAST(:u AS uuid), 'POST /x', 'fresh' || g, 'h', 201,"
            " now() - make_interval(hours => 24) + interval '1 minute' * g"
            " FROM generate_series(1, 3) AS g"
        ),
        {"u": owner},
    )
    raw = await _raw(conn)

    async def left() -> list[str]:
        rows = await raw.fetch(
            "SELECT key FROM idempotency_keys WHERE user_id = $1 ORDER BY key", owner
        )
        return [r["key"] for r in rows]

    assert await idempotency.purge_expired(raw, 24, 5) == 5
    assert await left() == ["fresh1", "fresh2", "fresh3", "k1", "k2"]  # the 5 oldest went
    assert await idempotency.purge_expired(raw, 24, 5) == 2
    assert await idempotency.purge_expired(raw, 24, 5) == 0
    assert await left() == ["fresh1", "fresh2", "fresh3"]


async def test_finished_outbox_jobs_go_after_their_retention_and_nothing_else(
    conn: AsyncConnection,
) -> None:
    topic = f"test.housekeeping.{uuid.uuid4().hex[:8]}"
    await conn.execute(
        text(
            "INSERT INTO outbox (topic, status, updated_at, run_at) VALUES"
            " (:t, 'done', now() - interval '4 days', now()),"
            " (:t, 'done', now() - interval '5 days', now()),"
            " (:t, 'cancelled', now() - interval '6 days', now()),"
            " (:t, 'done', now() - interval '1 hour', now()),"
            " (:t, 'dead', now() - interval '9 days', now()),"
            " (:t, 'pending', now() - interval '8 days', now() + interval '1 day')"
        ),
        {"t": topic},
    )
    raw = await _raw(conn)
    assert await outbox.purge_finished(raw, 72 * 3600, 2) == 2
    assert await outbox.purge_finished(raw, 72 * 3600, 2) == 1
    assert await outbox.purge_finished(raw, 72 * 3600, 2) == 0
    left = await raw.fetch("SELECT status FROM outbox WHERE topic = $1 ORDER BY updated_at", topic)
    assert [r["status"] for r in left] == ["dead", "pending", "done"]


async def test_audience_of_finished_fanouts_goes_but_not_of_one_still_sending(
    conn: AsyncConnection,
) -> None:
    old_done, sending, recent = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    await conn.execute(
        text(
            "INSERT INTO notification_fanouts (promo_id, status, started_at, finished_at) VALUES"
            " (:a, 'done', now() - interval '5 days', now() - interval '4 days'),"
            " (:b, 'sending', now() - interval '5 days', NULL),"
            " (:c, 'cancelled', now() - interval '2 hours', now() - interval '1 hour')"
        ),
        {"a": old_done, "b": sending, "c": recent},
    )
    await conn.execute(
        text(
            "INSERT INTO notification_audience (promo_id, user_id, day)"
            " SELECT p, gen_random_uuid(), current_date"
            " FROM unnest(CAST(:ps AS uuid[])) AS p, generate_series(1, 5)"
        ),
        {"ps": [old_done, sending, recent]},
    )
    raw = await _raw(conn)
    assert await fanout.purge_audience(raw, 72 * 3600, 3) == 3
    assert await fanout.purge_audience(raw, 72 * 3600, 3) == 2
    assert await fanout.purge_audience(raw, 72 * 3600, 3) == 0
    left = await raw.fetch(
        "SELECT promo_id, count(*) AS n FROM notification_audience"
        " WHERE promo_id = ANY($1::uuid[]) GROUP BY 1",
        [old_done, sending, recent],
    )
    assert {r["promo_id"]: r["n"] for r in left} == {sending: 5, recent: 5}


async def test_a_round_says_when_a_batch_was_full(conn: AsyncConnection) -> None:
    await conn.execute(
        text(
            "INSERT INTO idempotency_keys (user_id, route, key, request_hash, status_code,"
            " created_at) SELECT gen_random_uuid(), 'POST /x', 'k', 'h', 201,"
            " now() - interval '3 days' FROM generate_series(1, 3)"
        )
    )
    config = WorkerConfig(database_url="unused", direct_url="unused", purge_batch=2)
    raw = await _raw(conn)
    assert await purge(raw, config) is True  # 2 of 3 keys: more to do
    assert await purge(raw, config) is False
