"""Many real connections at once against committed data; invariants checked in the
database afterwards."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import httpx
from fastapi import FastAPI
from sqlalchemy import text

from app.core.security import Role
from tests.books.helpers import API, fill, history_count, make_book, unique_codes
from tests.conftest import MakeUser
from tests.helpers import ApiUser, assert_invariants, assert_problem


async def _live_book(
    client: httpx.AsyncClient, admin: ApiUser, n: int, **settings: Any
) -> tuple[dict[str, Any], list[str]]:
    book = await make_book(client, admin, **settings)
    codes = unique_codes(n)
    await fill(client, admin, book["id"], codes)
    return book, codes


def _slugs(responses: list[httpx.Response]) -> Counter[str]:
    return Counter(
        "ok" if r.status_code < 300 else str(r.json()["type"]).rsplit("/", 1)[-1] for r in responses
    )


async def test_200_concurrent_assigns_on_100_codes(
    app: FastAPI, live_client: httpx.AsyncClient, make_live_user: MakeUser
) -> None:
    admin = await make_live_user(Role.admin)
    book, codes = await _live_book(live_client, admin, 100)
    users = await asyncio.gather(*[make_live_user() for _ in range(200)])
    responses = await asyncio.gather(
        *[live_client.post(f"{API}/books/{book['id']}/assign", headers=u.headers) for u in users]
    )
    assert _slugs(responses) == {"ok": 100, "book-exhausted": 100}
    won = [r.json()["code"] for r in responses if r.status_code == 201]
    assert len(set(won)) == 100 and set(won) == set(codes)
    async with app.state.db.engine.connect() as conn:
        holders = (
            await conn.execute(
                text(
                    "SELECT count(DISTINCT user_id), count(*) FROM codes"
                    " WHERE book_id = :b AND status = 'assigned'"
                ),
                {"b": book["id"]},
            )
        ).one()
    assert tuple(holders) == (100, 100)
    assert await history_count(app.state.db.engine, book["id"]) == 100


async def test_one_user_concurrent_assigns_never_exceed_limit(
    app: FastAPI, live_client: httpx.AsyncClient, make_live_user: MakeUser
) -> None:
    admin = await make_live_user(Role.admin)
    book, _ = await _live_book(live_client, admin, 50, max_codes_per_user=3)
    user = await make_live_user()
    responses = await asyncio.gather(
        *[
            live_client.post(f"{API}/books/{book['id']}/assign", headers=user.headers)
            for _ in range(30)
        ]
    )
    assert _slugs(responses) == {"ok": 3, "code-limit-reached": 27}
    async with app.state.db.engine.connect() as conn:
        held = (
            await conn.execute(
                text("SELECT count(*) FROM codes WHERE book_id = :b AND user_id = :u"),
                {"b": book["id"], "u": user.id},
            )
        ).scalar_one()
    assert held == 3
    assert await history_count(app.state.db.engine, book["id"]) == 3


async def test_50_concurrent_redeems_of_a_3_use_code(
    app: FastAPI, live_client: httpx.AsyncClient, make_live_user: MakeUser
) -> None:
    admin = await make_live_user(Role.admin)
    book, _ = await _live_book(live_client, admin, 1, max_redemptions_per_code=3)
    user = await make_live_user()
    code = (
        await live_client.post(f"{API}/books/{book['id']}/assign", headers=user.headers)
    ).json()["code"]
    responses = await asyncio.gather(
        *[live_client.post(f"{API}/codes/{code}/redeem", headers=user.headers) for _ in range(50)]
    )
    assert _slugs(responses) == {"ok": 3, "redemption-limit-reached": 47}
    ids = {r.json()["redemption_id"] for r in responses if r.status_code == 200}
    assert len(ids) == 3
    got = (await live_client.get(f"{API}/codes/{code}", headers=user.headers)).json()
    assert got["status"] == "redeemed" and got["redemptions"] == 3
    assert await history_count(app.state.db.engine, book["id"], "redeemed") == 3
    assert await history_count(app.state.db.engine, book["id"]) == 4


async def test_concurrent_redeems_respect_redemptions_per_user(
    app: FastAPI, live_client: httpx.AsyncClient, make_live_user: MakeUser
) -> None:
    admin = await make_live_user(Role.admin)
    book, _ = await _live_book(
        live_client,
        admin,
        3,
        max_codes_per_user=3,
        max_redemptions_per_code=5,
        max_redemptions_per_user=4,
    )
    user = await make_live_user()
    codes = [
        (await live_client.post(f"{API}/books/{book['id']}/assign", headers=user.headers)).json()[
            "code"
        ]
        for _ in range(3)
    ]
    responses = await asyncio.gather(
        *[
            live_client.post(f"{API}/codes/{codes[i % 3]}/redeem", headers=user.headers)
            for i in range(30)
        ]
    )
    assert _slugs(responses)["ok"] == 4
    assert await history_count(app.state.db.engine, book["id"], "redeemed") == 4


async def test_concurrent_lock_of_one_code_has_one_winner(
    app: FastAPI, live_client: httpx.AsyncClient, make_live_user: MakeUser
) -> None:
    admin = await make_live_user(Role.admin)
    book, _ = await _live_book(live_client, admin, 1)
    user = await make_live_user()
    code = (
        await live_client.post(f"{API}/books/{book['id']}/assign", headers=user.headers)
    ).json()["code"]
    responses = await asyncio.gather(
        *[live_client.post(f"{API}/codes/{code}/lock", headers=user.headers) for _ in range(30)]
    )
    assert _slugs(responses) == {"ok": 1, "code-locked": 29}
    assert await history_count(app.state.db.engine, book["id"], "locked") == 1
    assert await history_count(app.state.db.engine, book["id"]) == 2


async def test_concurrent_rollbacks_of_one_redemption_have_one_winner(
    app: FastAPI, live_client: httpx.AsyncClient, make_live_user: MakeUser
) -> None:
    admin = await make_live_user(Role.admin)
    book, _ = await _live_book(live_client, admin, 1, max_redemptions_per_code=2)
    user = await make_live_user()
    code = (
        await live_client.post(f"{API}/books/{book['id']}/assign", headers=user.headers)
    ).json()["code"]
    await live_client.post(f"{API}/codes/{code}/redeem", headers=user.headers)
    red = (await live_client.post(f"{API}/codes/{code}/redeem", headers=user.headers)).json()
    responses = await asyncio.gather(
        *[
            live_client.post(
                f"{API}/codes/{code}/rollback",
                json={"redemption_id": red["redemption_id"]},
                headers=admin.headers,
            )
            for _ in range(10)
        ]
    )
    assert _slugs(responses) == {"ok": 1, "not-redeemed": 9}
    got = (await live_client.get(f"{API}/codes/{code}", headers=user.headers)).json()
    assert got["redemptions"] == 1 and got["status"] == "assigned"


async def test_distribute_and_assigns_in_parallel_never_double_assign(
    app: FastAPI, live_client: httpx.AsyncClient, make_live_user: MakeUser
) -> None:
    admin = await make_live_user(Role.admin)
    book, _ = await _live_book(live_client, admin, 40)
    users = await asyncio.gather(*[make_live_user() for _ in range(30)])
    others = await asyncio.gather(*[make_live_user() for _ in range(20)])
    distribute = live_client.post(
        f"{API}/books/{book['id']}/distribute",
        json={"user_ids": [str(u.id) for u in users]},
        headers=admin.headers,
    )
    singles = [
        live_client.post(f"{API}/books/{book['id']}/assign", headers=u.headers) for u in others
    ]
    responses = await asyncio.gather(distribute, *singles)
    dist = responses[0].json()
    single_ok = sum(1 for r in responses[1:] if r.status_code == 201)
    assert dist["assigned"] + single_ok == 40
    async with app.state.db.engine.connect() as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT count(*), count(DISTINCT user_id) FROM codes"
                    " WHERE book_id = :b AND user_id IS NOT NULL"
                ),
                {"b": book["id"]},
            )
        ).one()
    assert tuple(row) == (40, 40)
    assert await history_count(app.state.db.engine, book["id"]) == 40


async def test_export_streams_over_a_real_connection(
    live_client: httpx.AsyncClient, make_live_user: MakeUser
) -> None:
    admin = await make_live_user(Role.admin)
    book, codes = await _live_book(live_client, admin, 12_000)
    async with live_client.stream(
        "GET", f"{API}/books/{book['id']}/codes.csv", headers=admin.headers
    ) as resp:
        assert resp.status_code == 200
        body = b"".join([chunk async for chunk in resp.aiter_bytes()])
    lines = body.decode().splitlines()
    assert lines[0] == "code,status,user_id,assigned_at,redemptions"
    assert sorted(line.split(",")[0] for line in lines[1:]) == sorted(codes)


async def test_rejected_import_over_the_real_pool_stores_nothing(
    app: FastAPI, live_client: httpx.AsyncClient, make_live_user: MakeUser
) -> None:
    admin = await make_live_user(Role.admin)
    book = await make_book(live_client, admin)
    codes = unique_codes(50)
    body = ("\n".join(codes) + "\nnot valid\n").encode()
    headers = {**admin.headers, "Content-Type": "text/csv"}
    for _ in range(3):  # the staging tables never outlive a failed request
        resp = await live_client.post(
            f"{API}/books/{book['id']}/codes", content=body, headers=headers
        )
        assert resp.status_code == 422, resp.text
    async with app.state.db.engine.connect() as conn:
        stored = (
            await conn.execute(
                text(
                    "SELECT (SELECT count(*) FROM codes WHERE book_id = :b),"
                    " (SELECT count(*) FROM imports WHERE book_id = :b)"
                ),
                {"b": book["id"]},
            )
        ).one()
    assert tuple(stored) == (0, 0)
    ok = await fill(live_client, admin, book["id"], codes)
    assert ok["inserted"] == 50


async def _upload_live(
    client: httpx.AsyncClient, admin: ApiUser, book_id: str, codes: list[str]
) -> httpx.Response:
    return await client.post(
        f"{API}/books/{book_id}/codes",
        content="\n".join(codes).encode(),
        headers={**admin.headers, "Content-Type": "text/csv"},
    )


async def test_concurrent_overlapping_uploads_into_one_book_all_succeed(
    app: FastAPI, live_client: httpx.AsyncClient, make_live_user: MakeUser
) -> None:
    """Uploads racing on the same codes of the same book: the codes another upload stored
    meanwhile count as already present, never as another book's (409)."""
    admin = await make_live_user(Role.admin)
    book = await make_book(live_client, admin)
    shared = unique_codes(3000)
    files = [shared + unique_codes(500) for _ in range(6)]
    responses = await asyncio.gather(
        *[_upload_live(live_client, admin, book["id"], f) for f in files]
    )
    assert [r.status_code for r in responses] == [201] * 6, [r.text for r in responses]
    outs = [r.json() for r in responses]
    distinct = {c for f in files for c in f}
    assert sum(o["inserted"] for o in outs) == len(distinct)
    for out, f in zip(outs, files, strict=True):
        assert out["received"] == len(f) and out["duplicates_in_file"] == 0
        assert out["inserted"] + out["already_present"] == len(f)
    async with app.state.db.engine.connect() as conn:
        stored = (
            await conn.execute(
                text(
                    "SELECT count(*), count(DISTINCT code),"
                    " (SELECT coalesce(sum(inserted), 0) FROM imports WHERE book_id = :b)"
                    " FROM codes WHERE book_id = :b"
                ),
                {"b": book["id"]},
            )
        ).one()
    assert tuple(stored) == (len(distinct), len(distinct), len(distinct))
    await assert_invariants(app)


async def test_concurrent_uploads_of_one_code_set_into_two_books_one_wins(
    app: FastAPI, live_client: httpx.AsyncClient, make_live_user: MakeUser
) -> None:
    """The same codes raced into two books: one book gets them all, the other upload is
    409 `code-exists` and stores nothing (not even its codes no other book has)."""
    admin = await make_live_user(Role.admin)
    books = [await make_book(live_client, admin) for _ in range(2)]
    shared = unique_codes(3000)
    own = [unique_codes(200) for _ in books]
    responses = await asyncio.gather(
        *[
            _upload_live(live_client, admin, b["id"], shared + extra)
            for b, extra in zip(books, own, strict=True)
        ]
    )
    assert sorted(r.status_code for r in responses) == [201, 409], [r.text for r in responses]
    winner = 0 if responses[0].status_code == 201 else 1
    problem = assert_problem(responses[1 - winner], 409, "code-exists")
    refused: list[dict[str, Any]] = problem["codes"]  # type: ignore[assignment]
    assert len(refused) == 100 and {r["code"] for r in refused} <= set(shared)
    assert responses[winner].json()["inserted"] == len(shared) + len(own[winner])
    async with app.state.db.engine.connect() as conn:
        per_book = {
            str(r[0]): r[1]
            for r in await conn.execute(
                text("SELECT book_id, count(*) FROM codes WHERE book_id IN (:a, :b) GROUP BY 1"),
                {"a": books[0]["id"], "b": books[1]["id"]},
            )
        }
    assert per_book == {books[winner]["id"]: len(shared) + len(own[winner])}
