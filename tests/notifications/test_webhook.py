from __future__ import annotations

import asyncpg
import httpx
import orjson
from fastapi import FastAPI

from app.notifications.webhook import verify
from tests.conftest import MakeUser
from tests.helpers import ApiUser
from tests.notifications.conftest import (
    SECRET,
    Place,
    RunWorker,
    Sink,
    add_promo,
    add_users,
    fanout_finished,
    schedule,
    wait_for,
)


async def test_flaky_webhook_is_delivered_on_the_third_attempt_with_a_valid_signature(
    app: FastAPI, pg: asyncpg.Connection, run_worker: RunWorker, sink: Sink
) -> None:
    place = Place()
    users = await add_users(pg, place.north(100), 3)
    sink.fail_first = 2
    promo = await add_promo(pg, place)
    await schedule(app, promo)
    await run_worker(webhook_url=sink.url, webhook_secret=SECRET)
    assert await wait_for(lambda: fanout_finished(pg, promo)) == "done"
    job = await wait_for(
        lambda: pg.fetchrow(
            "SELECT status, attempts FROM outbox WHERE topic = 'webhook.deliver'"
            " AND payload ->> 'promo_id' = $1 AND status = 'done'",
            str(promo),
        )
    )
    assert job["attempts"] == 3
    calls = sink.for_promo(promo)
    assert [status for status, _, _ in calls] == [503, 503, 200]
    [(_, body, headers)] = [c for c in calls if c[0] == 200]
    assert verify(SECRET, body, headers["x-signature"])
    assert headers["x-signature"].startswith("sha256=")
    assert not verify("another-secret", body, headers["x-signature"])
    doc = orjson.loads(body)
    ids = await pg.fetch("SELECT id, user_id FROM notifications WHERE promo_id = $1", promo)
    assert sorted(n["id"] for n in doc["notifications"]) == sorted(r["id"] for r in ids)
    assert {n["user_id"] for n in doc["notifications"]} == {str(u) for u in users}
    assert doc["promo"]["id"] == str(promo)


async def test_always_failing_webhook_becomes_a_dead_letter_and_retry_delivers_it(
    app: FastAPI,
    pg: asyncpg.Connection,
    run_worker: RunWorker,
    sink: Sink,
    live_client: httpx.AsyncClient,
    make_live_user: MakeUser,
) -> None:
    from app.core.security import Role

    admin: ApiUser = await make_live_user(Role.admin)
    place = Place()
    await add_users(pg, place.north(100), 2)
    sink.always_fail = True
    promo = await add_promo(pg, place)
    await schedule(app, promo)
    await run_worker(webhook_url=sink.url, webhook_secret=SECRET, webhook_max_attempts=3)
    job = await wait_for(
        lambda: pg.fetchrow(
            "SELECT id, attempts, last_error FROM outbox WHERE topic = 'webhook.deliver'"
            " AND payload ->> 'promo_id' = $1 AND status = 'dead'",
            str(promo),
        )
    )
    assert job["attempts"] == 3 and job["last_error"] == "DeliveryError: HTTP 503"
    assert len(sink.for_promo(promo)) == 3

    listed = await live_client.get("/api/v1/notifications/dead-letters", headers=admin.headers)
    assert listed.status_code == 200, listed.text
    mine = [d for d in listed.json()["items"] if d["id"] == job["id"]]
    assert mine and mine[0]["notifications"] == 2 and mine[0]["promo_id"] == str(promo)

    sink.always_fail = False
    url = f"/api/v1/notifications/dead-letters/{job['id']}/retry"
    retried = await live_client.post(url, headers=admin.headers)
    assert retried.status_code == 200, retried.text
    assert retried.json()["status"] == "pending" and retried.json()["attempts"] == 0
    await wait_for(
        lambda: pg.fetchval("SELECT status = 'done' FROM outbox WHERE id = $1", job["id"])
    )
    accepted = [c for c in sink.for_promo(promo) if c[0] == 200]
    assert len(accepted) == 1
    assert verify(SECRET, accepted[0][1], accepted[0][2]["x-signature"])
    again = await live_client.post(url, headers=admin.headers)
    assert again.status_code == 404
    user = await make_live_user(Role.user)
    forbidden = await live_client.get("/api/v1/notifications/dead-letters", headers=user.headers)
    assert forbidden.status_code == 403
