"""Coalesced random assigns (app/core/coalesce.py, `book_assign_random_batch`): a crowd on
one book is served in batches, one transaction each, and every request gets the answer it
would have got alone: per-user limits across requests in the same batch, distinct codes,
a pause that lands mid-crowd, history rows, invariants after. With `COALESCE_HOT_PATHS=false`
the same tests run on the per-request path (the batch-size check is then skipped by it)."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text

from app.core.security import Role
from tests.books.flows import book_with_codes
from tests.books.helpers import API, history_count
from tests.conftest import MakeUser
from tests.helpers import assert_coalesced, assert_invariants, coalesced_batches


def _slug(response: httpx.Response) -> str:
    if response.status_code == 201:
        return "ok"
    return str(response.json()["type"]).rsplit("/", 1)[-1]


async def _held(app: FastAPI, book_id: str) -> dict[str, list[str]]:
    async with app.state.db.engine.connect() as conn:
        rows = (
            await conn.execute(
                text(
                    "SELECT user_id::text, code FROM codes"
                    " WHERE book_id = :b AND user_id IS NOT NULL"
                ),
                {"b": book_id},
            )
        ).all()
    held: dict[str, list[str]] = {}
    for user_id, code in rows:
        held.setdefault(user_id, []).append(code)
    return held


async def test_a_crowd_with_repeat_requests_gets_each_users_limit_in_batches(
    app: FastAPI, live_client: httpx.AsyncClient, make_live_user: MakeUser
) -> None:
    admin = await make_live_user(Role.admin)
    book, codes = await book_with_codes(live_client, admin, 400, max_codes_per_user=2)
    users = await asyncio.gather(*[make_live_user() for _ in range(60)])
    before = coalesced_batches("assign")
    # Each user asks three times at once; the admin asks once more for the first ten.
    calls: list[tuple[str, Any]] = [
        (u.id, live_client.post(f"{API}/books/{book['id']}/assign", headers=u.headers))
        for u in users
        for _ in range(3)
    ]
    calls += [
        (
            u.id,
            live_client.post(
                f"{API}/books/{book['id']}/assign",
                headers=admin.headers,
                json={"user_id": str(u.id)},
            ),
        )
        for u in users[:10]
    ]
    answers = await asyncio.gather(*[call for _, call in calls])

    per_user: dict[str, Counter[str]] = {}
    for (user_id, _), answer in zip(calls, answers, strict=True):
        per_user.setdefault(str(user_id), Counter())[_slug(answer)] += 1
        if answer.status_code == 201:
            assert answer.headers["Location"] == f"/api/v1/codes/{answer.json()['code']}"
            assert answer.json()["user_id"] == str(user_id)
    for user in users:
        asked = 4 if user in users[:10] else 3
        assert per_user[str(user.id)] == {"ok": 2, "code-limit-reached": asked - 2}, user.id

    won = [a.json()["code"] for a in answers if a.status_code == 201]
    assert len(won) == len(set(won)) == 120 and set(won) <= set(codes)
    held = await _held(app, book["id"])
    assert {u: sorted(c) for u, c in held.items()} == {
        str(u.id): sorted(
            a.json()["code"]
            for (uid, _), a in zip(calls, answers, strict=True)
            if uid == u.id and a.status_code == 201
        )
        for u in users
    }
    assert await history_count(app.state.db.engine, book["id"]) == 120
    await assert_invariants(app)

    if app.state.settings.coalesce_hot_paths:
        assert_coalesced("assign", before, len(calls))


async def test_a_pause_mid_crowd_answers_book_inactive_and_loses_nothing(
    app: FastAPI, live_client: httpx.AsyncClient, make_live_user: MakeUser
) -> None:
    admin = await make_live_user(Role.admin)
    book, _ = await book_with_codes(live_client, admin, 200)
    users = await asyncio.gather(*[make_live_user() for _ in range(120)])
    path = f"{API}/books/{book['id']}/assign"
    first = [asyncio.ensure_future(live_client.post(path, headers=u.headers)) for u in users[:60]]
    pause = asyncio.ensure_future(
        live_client.patch(
            f"{API}/books/{book['id']}", headers=admin.headers, json={"status": "paused"}
        )
    )
    second = [asyncio.ensure_future(live_client.post(path, headers=u.headers)) for u in users[60:]]
    answers = await asyncio.gather(*first, *second)
    assert (await pause).status_code == 200
    slugs = Counter(_slug(a) for a in answers)
    assert set(slugs) <= {"ok", "book-inactive"}, slugs
    after = await live_client.post(path, headers=users[0].headers)
    assert _slug(after) == "book-inactive"

    held = await _held(app, book["id"])
    winners = {a.json()["user_id"]: [a.json()["code"]] for a in answers if a.status_code == 201}
    assert held == winners
    assert await history_count(app.state.db.engine, book["id"]) == slugs["ok"]
    await assert_invariants(app)


@pytest.mark.parametrize("limit", [1, 3])
async def test_one_user_in_many_batches_never_exceeds_the_limit(
    app: FastAPI, live_client: httpx.AsyncClient, make_live_user: MakeUser, limit: int
) -> None:
    admin = await make_live_user(Role.admin)
    book, _ = await book_with_codes(live_client, admin, 50, max_codes_per_user=limit)
    user = await make_live_user()
    others = await asyncio.gather(*[make_live_user() for _ in range(20)])
    path = f"{API}/books/{book['id']}/assign"
    mine = [live_client.post(path, headers=user.headers) for _ in range(40)]
    theirs = [live_client.post(path, headers=o.headers) for o in others]
    answers = await asyncio.gather(*mine, *theirs)
    assert Counter(_slug(a) for a in answers[:40]) == {
        "ok": limit,
        "code-limit-reached": 40 - limit,
    }
    assert Counter(_slug(a) for a in answers[40:]) == {"ok": 20}
    held = await _held(app, book["id"])
    assert len(held[str(user.id)]) == limit
    await assert_invariants(app)


async def test_a_missing_user_in_a_crowd_is_404_and_the_rest_are_served(
    app: FastAPI, live_client: httpx.AsyncClient, make_live_user: MakeUser
) -> None:
    admin = await make_live_user(Role.admin)
    book, _ = await book_with_codes(live_client, admin, 100, max_codes_per_user=1)
    users = await asyncio.gather(*[make_live_user() for _ in range(40)])
    path = f"{API}/books/{book['id']}/assign"
    calls: list[tuple[str | None, Any]] = []
    for i, user in enumerate(users):
        calls.append((str(user.id), live_client.post(path, headers=user.headers)))
        if i % 8 == 0:  # an admin's assign to a user that does not exist, among them
            nobody = {"user_id": str(uuid.uuid4())}
            calls.append((None, live_client.post(path, headers=admin.headers, json=nobody)))
    answers = await asyncio.gather(*[call for _, call in calls])
    for (user_id, _), answer in zip(calls, answers, strict=True):
        if user_id is None:
            assert answer.status_code == 404, answer.text
        else:
            assert answer.status_code == 201 and answer.json()["user_id"] == user_id, answer.text
    held = await _held(app, book["id"])
    assert sorted(held) == sorted(str(u.id) for u in users)
    await assert_invariants(app)


async def test_keyed_requests_in_a_crowd_run_once_and_replay_what_they_stored(
    app: FastAPI, live_client: httpx.AsyncClient, make_live_user: MakeUser
) -> None:
    """Each of 40 users, limited to one code, sends two plain assigns and three with one
    `Idempotency-Key` at once. A keyed request runs alone, outside the batches, and its
    record commits with its effect: every user ends with exactly one code; the keyed
    answers are the key's one run (201, or `code-limit-reached` when a plain request won)
    or `idempotency-key-in-use` while it runs; a later replay answers what was stored."""
    admin = await make_live_user(Role.admin)
    book, _ = await book_with_codes(live_client, admin, 300, max_codes_per_user=1)
    users = await asyncio.gather(*[make_live_user() for _ in range(40)])
    path = f"{API}/books/{book['id']}/assign"

    def keyed(user: Any) -> dict[str, str]:
        return {**user.headers, "Idempotency-Key": f"crowd-{user.id}"}

    calls = [(u, False, live_client.post(path, headers=u.headers)) for u in users for _ in "ab"]
    calls += [(u, True, live_client.post(path, headers=keyed(u))) for u in users for _ in "abc"]
    answers = await asyncio.gather(*[call for _, _, call in calls])

    held = await _held(app, book["id"])
    assert sorted(len(held.get(str(u.id), [])) for u in users) == [1] * 40
    for user in users:
        mine = [a for (u, is_keyed, _), a in zip(calls, answers, strict=True) if u is user]
        keyed_answers = [
            a for (u, is_keyed, _), a in zip(calls, answers, strict=True) if u is user and is_keyed
        ]
        assert {_slug(a) for a in mine} <= {"ok", "code-limit-reached", "idempotency-key-in-use"}
        ran = [a for a in keyed_answers if _slug(a) != "idempotency-key-in-use"]
        assert ran, user.id  # one of the three ran the key; the others saw it in use or replayed
        assert len({(a.status_code, a.text) for a in ran}) == 1, [a.text for a in ran]
        replay = await live_client.post(path, headers=keyed(user))
        assert (replay.status_code, replay.json()) == (ran[0].status_code, ran[0].json())
        if replay.status_code == 201:
            assert held[str(user.id)] == [replay.json()["code"]]
    assert await history_count(app.state.db.engine, book["id"]) == 40
    await assert_invariants(app)


async def test_a_crowd_on_a_book_of_multi_use_codes_gets_one_code_each_to_redeem_often(
    app: FastAPI, live_client: httpx.AsyncClient, make_live_user: MakeUser
) -> None:
    """A multi-use book (each code redeemable three times) is assigned like any other in
    batches: 30 users asking twice at once, one code a user, each code to one user; then
    each redeems theirs three times and a fourth is refused."""
    admin = await make_live_user(Role.admin)
    book, codes = await book_with_codes(
        live_client, admin, 50, max_codes_per_user=1, max_redemptions_per_code=3
    )
    users = await asyncio.gather(*[make_live_user() for _ in range(30)])
    path = f"{API}/books/{book['id']}/assign"
    calls = [(u, live_client.post(path, headers=u.headers)) for u in users for _ in "ab"]
    answers = await asyncio.gather(*[call for _, call in calls])
    assert Counter(_slug(a) for a in answers) == {"ok": 30, "code-limit-reached": 30}
    won = {
        str(u.id): a.json()["code"]
        for (u, _), a in zip(calls, answers, strict=True)
        if a.status_code == 201
    }
    assert len(won) == len(set(won.values())) == 30 and set(won.values()) <= set(codes)
    for user in users[:5]:
        code = won[str(user.id)]
        for left in (2, 1, 0):
            redeemed = await live_client.post(f"{API}/codes/{code}/redeem", headers=user.headers)
            assert redeemed.status_code == 200, redeemed.text
            assert redeemed.json()["redemptions_left"] == left
        again = await live_client.post(f"{API}/codes/{code}/redeem", headers=user.headers)
        assert again.status_code == 409, again.text
    await assert_invariants(app)
