"""`GET /books/{id}/report`: a book's transitions counted per hour or day, zero-filled."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from tests.books.flows import assign, book_with_codes
from tests.books.helpers import API
from tests.conftest import MakeUser
from tests.helpers import ApiUser, assert_problem


async def test_counts_per_hour_with_every_bucket_present(
    client: httpx.AsyncClient, admin: ApiUser, make_user: MakeUser, conn: AsyncConnection
) -> None:
    book, _ = await book_with_codes(client, admin, n=5, max_codes_per_user=None)
    shopper = await make_user()
    codes = [await assign(client, shopper, book["id"]) for _ in range(3)]
    locked = await client.post(f"{API}/codes/{codes[0]['code']}/lock", headers=shopper.headers)
    assert locked.status_code == 200, locked.text
    bodies = [{"lock_id": locked.json()["lock_id"]}, {}]
    for c, body in zip(codes[:2], bodies, strict=True):
        resp = await client.post(
            f"{API}/codes/{c['code']}/redeem", json=body, headers=shopper.headers
        )
        assert resp.status_code == 200, resp.text
    # Move one assignment three hours back: it lands in its own bucket.
    # (The history is append-only: its guard trigger is off for this one statement.)
    await conn.execute(text("SET LOCAL session_replication_role = replica"))
    await conn.execute(
        text(
            "UPDATE redemption_history SET at = at - interval '3 hours'"
            " WHERE id = (SELECT min(id) FROM redemption_history WHERE book_id = :b)"
        ),
        {"b": book["id"]},
    )
    await conn.execute(text("SET LOCAL session_replication_role = origin"))
    now = datetime.now(UTC)
    since = (now - timedelta(hours=5)).replace(minute=0, second=0, microsecond=0)
    until = now.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    resp = await client.get(
        f"{API}/books/{book['id']}/report",
        params={"bucket": "hour", "since": since.isoformat(), "until": until.isoformat()},
        headers=admin.headers,
    )
    assert resp.status_code == 200, resp.text
    report = resp.json()
    assert report["bucket"] == "hour"
    points = report["points"]
    assert len(points) == 6
    assert [p["at"] for p in points] == [
        (since + timedelta(hours=i)).isoformat().replace("+00:00", "Z") for i in range(6)
    ]
    totals = {
        k: sum(p[k] for p in points) for k in ("assigned", "locked", "redeemed", "rolled_back")
    }
    assert totals == {"assigned": 3, "locked": 1, "redeemed": 2, "rolled_back": 0}
    # The moved assignment sits three buckets before the others (all made a moment ago).
    busy = [(i, p["assigned"]) for i, p in enumerate(points) if p["assigned"]]
    assert [n for _, n in busy] == [1, 2] and busy[1][0] - busy[0][0] == 3, busy
    assert points[busy[1][0]]["redeemed"] == 2


async def test_default_window_and_bad_queries(
    client: httpx.AsyncClient, admin: ApiUser, user: ApiUser
) -> None:
    book, _ = await book_with_codes(client, admin)
    url = f"{API}/books/{book['id']}/report"
    days = (await client.get(url, headers=admin.headers)).json()
    assert days["bucket"] == "day" and len(days["points"]) in (14, 15)
    hours = (await client.get(url, params={"bucket": "hour"}, headers=admin.headers)).json()
    assert len(hours["points"]) in (48, 49)

    now = datetime.now(UTC)
    backwards = {"since": now.isoformat(), "until": (now - timedelta(days=1)).isoformat()}
    body = assert_problem(
        await client.get(url, params=backwards, headers=admin.headers), 422, "validation-error"
    )
    assert body["errors"] == [{"loc": ["query", "since"], "msg": "must be before until"}]
    too_many = {"bucket": "hour", "since": (now - timedelta(days=60)).isoformat()}
    assert_problem(
        await client.get(url, params=too_many, headers=admin.headers), 422, "validation-error"
    )
    assert_problem(
        await client.get(url, params={"bucket": "week"}, headers=admin.headers),
        422,
        "validation-error",
    )
    assert_problem(
        await client.get(url, params={"since": "yesterday"}, headers=admin.headers),
        422,
        "validation-error",
    )
    assert_problem(await client.get(url, headers=user.headers), 403, "forbidden")
    missing = f"{API}/books/00000000-0000-0000-0000-000000000000/report"
    assert_problem(await client.get(missing, headers=admin.headers), 404, "not-found")
