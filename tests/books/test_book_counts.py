"""Book stats read counters kept by triggers on `codes` (`book_code_counts`), never a count of
the book: they must follow every way a code changes state, under concurrency too, and
`python -m app check` must notice when they do not."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from app.check import CHECKS, run_checks, violations
from app.core.security import Role
from tests.books.flows import assign, book_with_codes
from tests.books.helpers import API, fill, make_book, unique_codes
from tests.conftest import MakeUser
from tests.helpers import ApiUser, assert_invariants

_COUNTS_CHECK = tuple(c for c in CHECKS if c.name == "book_counts_match_codes")

# What the stats said before counters: a count of the book's codes, read as clients read
# them (a lapsed lock is assigned).
_COUNTED = text(
    """
    SELECT count(*) AS total,
           count(*) FILTER (WHERE status = 'unassigned') AS unassigned,
           count(*) FILTER (WHERE status = 'assigned'
                            OR (status = 'locked' AND locked_until <= now())) AS assigned,
           count(*) FILTER (WHERE status = 'locked' AND locked_until > now()) AS locked,
           count(*) FILTER (WHERE status = 'redeemed') AS redeemed
    FROM codes WHERE book_id = :b
    """
)


async def _stats(client: httpx.AsyncClient, admin: ApiUser, book_id: str) -> dict[str, int]:
    resp = await client.get(f"{API}/books/{book_id}", headers=admin.headers)
    assert resp.status_code == 200, resp.text
    stats: dict[str, int] = resp.json()["stats"]
    return stats


async def _assert_stats_are_the_count(
    client: httpx.AsyncClient, admin: ApiUser, conn: AsyncConnection, book_id: str
) -> dict[str, int]:
    stats = await _stats(client, admin, book_id)
    counted = (await conn.execute(_COUNTED, {"b": book_id})).one()._asdict()
    assert stats == counted
    raw = (await conn.get_raw_connection()).driver_connection
    assert not violations(await run_checks(raw, _COUNTS_CHECK))
    return stats


async def test_stats_follow_every_change_of_a_code(
    client: httpx.AsyncClient,
    admin: ApiUser,
    make_user: MakeUser,
    conn: AsyncConnection,
) -> None:
    book, codes = await book_with_codes(client, admin, 6, max_codes_per_user=None)
    book_id = book["id"]
    assert await _assert_stats_are_the_count(client, admin, conn, book_id) == {
        "total": 6,
        "unassigned": 6,
        "assigned": 0,
        "locked": 0,
        "redeemed": 0,
    }
    user = await make_user()
    mine = [(await assign(client, user, book_id))["code"] for _ in range(3)]
    specific = await client.post(
        f"{API}/codes/{next(c for c in codes if c not in mine)}/assign", headers=user.headers
    )
    assert specific.status_code == 201, specific.text
    mine.append(specific.json()["code"])
    lock = (await client.post(f"{API}/codes/{mine[0]}/lock", headers=user.headers)).json()
    await client.post(f"{API}/codes/{mine[1]}/lock", headers=user.headers)
    await client.post(f"{API}/codes/{mine[1]}/unlock", headers=admin.headers)
    stats = await _assert_stats_are_the_count(client, admin, conn, book_id)
    assert stats == {"total": 6, "unassigned": 2, "assigned": 3, "locked": 1, "redeemed": 0}
    redeemed = await client.post(
        f"{API}/codes/{mine[0]}/redeem", json={"lock_id": lock["lock_id"]}, headers=user.headers
    )
    assert redeemed.status_code == 200, redeemed.text
    await client.post(f"{API}/codes/{mine[2]}/redeem", headers=user.headers)
    stats = await _assert_stats_are_the_count(client, admin, conn, book_id)
    assert stats["redeemed"] == 2 and stats["assigned"] == 2 and stats["locked"] == 0
    rolled = await client.post(
        f"{API}/codes/{mine[0]}/rollback",
        json={"redemption_id": redeemed.json()["redemption_id"]},
        headers=admin.headers,
    )
    assert rolled.status_code == 200, rolled.text
    others = [await make_user() for _ in range(3)]
    dist = await client.post(
        f"{API}/books/{book_id}/distribute",
        json={"user_ids": [str(u.id) for u in others]},
        headers=admin.headers,
    )
    assert dist.status_code == 200, dist.text
    generated = await client.post(
        f"{API}/books/{book_id}/codes/generate",
        json={"count": 25, "pattern": "CNT-####-####"},
        headers=admin.headers,
    )
    assert generated.status_code == 201, generated.text
    await fill(client, admin, book_id, unique_codes(4))
    stats = await _assert_stats_are_the_count(client, admin, conn, book_id)
    assert stats == {"total": 35, "unassigned": 29, "assigned": 5, "locked": 0, "redeemed": 1}


async def test_a_lapsed_lock_reads_assigned_and_keeps_its_count(
    client: httpx.AsyncClient, admin: ApiUser, user: ApiUser, conn: AsyncConnection
) -> None:
    book, _ = await book_with_codes(client, admin, 2)
    code = (await assign(client, user, book["id"]))["code"]
    await client.post(f"{API}/codes/{code}/lock", headers=user.headers)
    assert (await _stats(client, admin, book["id"]))["locked"] == 1
    await conn.execute(
        text("UPDATE codes SET locked_until = now() - interval '1 second' WHERE code = :c"),
        {"c": code},
    )
    stats = await _assert_stats_are_the_count(client, admin, conn, book["id"])
    assert stats["locked"] == 0 and stats["assigned"] == 1
    # Locking it again (a lapsed lock is no lock) changes nothing in the counts either.
    again = await client.post(f"{API}/codes/{code}/lock", headers=user.headers)
    assert again.status_code == 200, again.text
    stats = await _assert_stats_are_the_count(client, admin, conn, book["id"])
    assert stats["locked"] == 1 and stats["assigned"] == 0


async def test_rows_written_by_hand_are_counted_too(
    client: httpx.AsyncClient, admin: ApiUser, user: ApiUser, conn: AsyncConnection
) -> None:
    """Triggers, not the service, keep the counts: a bulk load, a fix in psql or a test's
    own INSERT are counted like the service's statements."""
    book = await make_book(client, admin)
    await conn.execute(
        text(
            "INSERT INTO codes (book_id, code, status, user_id)"
            " SELECT :b, 'HAND-' || g, CASE WHEN g % 2 = 0 THEN 'assigned' ELSE 'unassigned' END,"
            " CASE WHEN g % 2 = 0 THEN CAST(:u AS uuid) END FROM generate_series(1, 10) AS g"
        ),
        {"b": book["id"], "u": user.id},
    )
    await conn.execute(
        text("UPDATE codes SET status = 'redeemed', redemptions = 1 WHERE code = 'HAND-2'")
    )
    await conn.execute(text("DELETE FROM codes WHERE code IN ('HAND-1', 'HAND-4')"))
    stats = await _assert_stats_are_the_count(client, admin, conn, book["id"])
    assert stats == {"total": 8, "unassigned": 4, "assigned": 3, "locked": 0, "redeemed": 1}


async def test_every_book_starts_with_its_sixteen_slots(
    client: httpx.AsyncClient, admin: ApiUser, conn: AsyncConnection
) -> None:
    book = await make_book(client, admin)
    slots = (
        await conn.execute(
            text("SELECT array_agg(slot ORDER BY slot) FROM book_code_counts WHERE book_id = :b"),
            {"b": book["id"]},
        )
    ).scalar_one()
    assert slots == list(range(16))


async def test_check_reports_counts_that_drifted(
    client: httpx.AsyncClient, admin: ApiUser, conn: AsyncConnection
) -> None:
    book, _ = await book_with_codes(client, admin, 3)
    await conn.execute(
        text("UPDATE book_code_counts SET held = held + 1 WHERE book_id = :b AND slot = 7"),
        {"b": book["id"]},
    )
    raw = (await conn.get_raw_connection()).driver_connection
    bad = violations(await run_checks(raw, _COUNTS_CHECK))
    assert [o.check.name for o in bad] == ["book_counts_match_codes"]
    assert bad[0].rows[0]["book_id"] == uuid.UUID(book["id"])
    assert bad[0].rows[0]["held"] == 0 and bad[0].rows[0]["kept_held"] == 1


async def test_concurrent_assigns_and_redeems_keep_exact_counts(
    app: FastAPI, live_client: httpx.AsyncClient, make_live_user: MakeUser
) -> None:
    admin = await make_live_user(Role.admin)
    book = await make_book(live_client, admin, max_codes_per_user=None)
    await fill(live_client, admin, book["id"], unique_codes(80))
    users = await asyncio.gather(*[make_live_user() for _ in range(64)])

    async def assign_and_redeem(who: ApiUser) -> Any:
        got = await live_client.post(f"{API}/books/{book['id']}/assign", headers=who.headers)
        assert got.status_code == 201, got.text
        code = got.json()["code"]
        return await live_client.post(f"{API}/codes/{code}/redeem", headers=who.headers)

    results = await asyncio.gather(*[assign_and_redeem(u) for u in users])
    assert all(r.status_code == 200 for r in results), [r.text for r in results[:3]]
    stats = await _stats(live_client, admin, book["id"])
    assert stats == {"total": 80, "unassigned": 16, "assigned": 0, "locked": 0, "redeemed": 64}
    await assert_invariants(app)


async def test_writers_of_one_book_do_not_wait_for_each_other_on_its_counts(
    app: FastAPI, live_client: httpx.AsyncClient, make_live_user: MakeUser
) -> None:
    """A transaction that changed a code holds a counter slot to its commit (an import, a
    distribute: seconds); another writer of the book takes another slot instead of waiting."""
    admin = await make_live_user(Role.admin)
    book = await make_book(live_client, admin)
    await fill(live_client, admin, book["id"], unique_codes(3))
    holders = await asyncio.gather(*[make_live_user() for _ in range(3)])
    claim = text(
        "WITH c AS (UPDATE codes SET status = 'assigned', user_id = :u, assigned_at = now()"
        " WHERE book_id = :b AND id = (SELECT id FROM codes WHERE book_id = :b"
        " ORDER BY id OFFSET :n LIMIT 1) RETURNING id, book_id, user_id)"
        " INSERT INTO redemption_history (code_id, book_id, user_id, action, actor_id)"
        " SELECT id, book_id, user_id, 'assigned', user_id FROM c"
    )
    engine = app.state.db.engine
    async with engine.connect() as first, engine.connect() as second:
        await first.execute(claim, {"u": holders[0].id, "b": book["id"], "n": 0})  # holds slot 0
        await second.execute(text("SET LOCAL lock_timeout = '500ms'"))
        await second.execute(claim, {"u": holders[1].id, "b": book["id"], "n": 1})  # must not wait
        slots = (
            await second.execute(
                text(
                    "SELECT array_agg(slot ORDER BY slot) FROM book_code_counts"
                    " WHERE book_id = :b AND held <> 0"
                ),
                {"b": book["id"]},
            )
        ).scalar_one()
        assert slots == [1]  # the second sees its own slot; the first's is not committed
        await second.commit()
        await first.commit()
    stats = await _stats(live_client, admin, book["id"])
    assert stats == {"total": 3, "unassigned": 1, "assigned": 2, "locked": 0, "redeemed": 0}
    await assert_invariants(app)
