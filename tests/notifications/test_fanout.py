from __future__ import annotations

import uuid

import asyncpg
import httpx
from fastapi import FastAPI

from app.core.security import Role
from tests.conftest import MakeUser
from tests.notifications.conftest import (
    Place,
    RunWorker,
    add_promo,
    add_users,
    fanout_finished,
    fanout_status,
    schedule,
    wait_for,
)


async def _notified(pg: asyncpg.Connection, promo_id: uuid.UUID) -> dict[uuid.UUID, int]:
    rows = await pg.fetch(
        "SELECT user_id, count(*) AS n FROM notifications WHERE promo_id = $1 GROUP BY user_id",
        promo_id,
    )
    return {r["user_id"]: r["n"] for r in rows}


async def _static_segment(pg: asyncpg.Connection, members: list[uuid.UUID]) -> uuid.UUID:
    seg: uuid.UUID = await pg.fetchval(
        "INSERT INTO segments (name, kind) VALUES ('beta', 'static') RETURNING id"
    )
    await pg.executemany(
        "INSERT INTO segment_members (segment_id, user_id) VALUES ($1, $2)",
        [(seg, m) for m in members],
    )
    return seg


async def test_promo_start_notifies_exactly_the_eligible_users_once(
    app: FastAPI, pg: asyncpg.Connection, run_worker: RunWorker
) -> None:
    place = Place()
    near, far = place.north(200), place.north(2_000)
    [member_near] = await add_users(pg, near)
    [vip_near] = await add_users(pg, near, tags=["vip"], timezone="Pacific/Kiritimati")
    [plain_near] = await add_users(pg, near, tags=["other"])
    [member_far] = await add_users(pg, far)
    [member_nowhere] = await add_users(pg, None)
    static = await _static_segment(pg, [member_near, member_far, member_nowhere])
    rule: uuid.UUID = await pg.fetchval(
        "INSERT INTO segments (name, kind, rules) VALUES ('vip', 'rule', $1) RETURNING id",
        '{"tags_any": ["vip"]}',
    )
    first = await add_promo(pg, place, radius_m=500, segment_ids=[static, rule])
    await schedule(app, first)
    await run_worker()

    assert await wait_for(lambda: fanout_finished(pg, first)) == "done"
    assert await _notified(pg, first) == {member_near: 1, vip_near: 1}
    vip_day = await pg.fetchval("SELECT day FROM notifications WHERE user_id = $1", vip_near)
    assert vip_day == await pg.fetchval("SELECT (now() AT TIME ZONE 'Pacific/Kiritimati')::date")

    # A second promo nearby the same day, for everyone in radius: only the one user who
    # got nothing today is notified.
    second = await add_promo(pg, place, radius_m=500, title="Coffee at 50 cents")
    await schedule(app, second)
    assert await wait_for(lambda: fanout_finished(pg, second)) == "done"
    assert await _notified(pg, second) == {plain_near: 1}
    per_user = await pg.fetch(
        "SELECT user_id, count(*) AS n FROM notifications WHERE user_id = ANY($1) GROUP BY user_id",
        [member_near, vip_near, plain_near, member_far, member_nowhere],
    )
    assert {r["user_id"]: r["n"] for r in per_user} == {member_near: 1, vip_near: 1, plain_near: 1}
    stats = await pg.fetchrow(
        "SELECT audience, notified FROM notification_fanouts WHERE promo_id = $1", second
    )
    assert stats is not None
    assert (stats["audience"], stats["notified"]) == (3, 1)
    assert await pg.fetchval("SELECT notified_at IS NOT NULL FROM promos WHERE id = $1", second)
    # Running the job again (a replayed schedule) notifies nobody.
    await schedule(app, second)
    await wait_for(
        lambda: pg.fetchval(
            "SELECT count(*) = 0 FROM outbox WHERE topic = 'promo.started' AND key = $1"
            " AND status IN ('pending', 'running')",
            str(second),
        )
    )
    assert await _notified(pg, second) == {plain_near: 1}


async def test_future_promo_waits_and_a_cancelled_one_never_notifies(
    app: FastAPI, pg: asyncpg.Connection, run_worker: RunWorker
) -> None:
    from app.promos.events import cancel_started

    place = Place()
    await add_users(pg, place.north(50), 3)
    later = await add_promo(pg, place, starts_in_s=1.0)
    # Due before `later`: by the time `later` has run, the worker has passed this one by.
    cancelled = await add_promo(pg, place)
    await schedule(app, later)
    await schedule(app, cancelled)
    async with app.state.db.sessionmaker() as session, session.begin():
        assert await cancel_started(session, cancelled) == 1
    await run_worker()
    assert await wait_for(lambda: fanout_finished(pg, later), timeout=10) == "done"
    assert len(await _notified(pg, later)) == 3
    # Not started before its time (both clocks the database's).
    early = await pg.fetchval(
        "SELECT f.started_at < p.starts_at FROM notification_fanouts f"
        " JOIN promos p ON p.id = f.promo_id WHERE f.promo_id = $1",
        later,
    )
    assert early is False
    status = await pg.fetchval(
        "SELECT status FROM outbox WHERE topic = 'promo.started' AND key = $1", str(cancelled)
    )
    assert status == "cancelled"
    assert await fanout_status(pg, cancelled) is None
    assert await _notified(pg, cancelled) == {}


async def test_inbox_lists_and_marks_read_only_own_notifications(
    app: FastAPI,
    pg: asyncpg.Connection,
    run_worker: RunWorker,
    live_client: httpx.AsyncClient,
    make_live_user: MakeUser,
) -> None:
    place = Place()
    owner = await make_live_user(Role.user)
    other = await make_live_user(Role.user)
    await pg.execute(
        "UPDATE users SET lat = $1, lng = $2 WHERE id = $3", *place.north(10), owner.id
    )
    promo = await add_promo(pg, place, title="Pan au chocolat")
    await schedule(app, promo)
    await run_worker()
    assert await wait_for(lambda: fanout_finished(pg, promo)) == "done"

    page = (await live_client.get("/api/v1/me/notifications", headers=owner.headers)).json()
    [item] = page["items"]
    assert item["promo_id"] == str(promo)
    assert item["title"] == "Pan au chocolat"
    assert item["status"] == "unread"
    # What the user needs to act on it: the price against the regular one, the store, the end.
    assert (item["promo_price_cents"], item["price_cents"], item["currency"]) == (100, 180, "EUR")
    assert item["store_name"] == "Bakery" and item["ends_at"]
    assert page["next_cursor"] is None
    empty = await live_client.get("/api/v1/me/notifications", headers=other.headers)
    assert empty.json() == {"items": [], "next_cursor": None}

    url = f"/api/v1/me/notifications/{item['id']}/read"
    denied = await live_client.post(url, headers=other.headers)
    assert denied.status_code == 404, denied.text
    assert denied.headers["content-type"].startswith("application/problem+json")
    read = await live_client.post(url, headers=owner.headers)
    assert read.status_code == 200, read.text
    assert read.json()["status"] == "read" and read.json()["read_at"]
    again = await live_client.post(url, headers=owner.headers)
    assert again.json()["read_at"] == read.json()["read_at"]
    unread = await live_client.get("/api/v1/me/notifications?status=unread", headers=owner.headers)
    assert unread.json()["items"] == []
