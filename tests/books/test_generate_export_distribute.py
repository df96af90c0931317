from __future__ import annotations

import csv
import io
import re

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from app.books import generate
from app.books.export import cell
from app.books.generate import draws, make_batch, slots_for
from app.books.schemas import GenerateIn
from app.core.security import Role
from tests.books.helpers import API, fill, history_count, make_book, unique_codes
from tests.conftest import MakeUser
from tests.helpers import ApiUser, assert_problem


async def test_generate_from_pattern(
    client: httpx.AsyncClient, admin: ApiUser, conn: AsyncConnection
) -> None:
    book = await make_book(client, admin)
    resp = await client.post(
        f"{API}/books/{book['id']}/codes/generate",
        json={"count": 500, "pattern": "sum-####-????"},
        headers=admin.headers,
    )
    assert resp.status_code == 201, resp.text
    assert resp.json() == {"inserted": 500}
    rows = (
        await conn.execute(text("SELECT code FROM codes WHERE book_id = :b"), {"b": book["id"]})
    ).all()
    assert len({r[0] for r in rows}) == 500
    shape = re.compile(r"SUM-[2-9]{4}-[A-HJKMNP-Z]{4}")
    assert all(shape.fullmatch(r[0]) for r in rows)


async def test_generate_with_prefix_and_length(
    client: httpx.AsyncClient, admin: ApiUser, conn: AsyncConnection
) -> None:
    book = await make_book(client, admin)
    resp = await client.post(
        f"{API}/books/{book['id']}/codes/generate",
        json={"count": 50, "prefix": "VIP-", "length": 6},
        headers=admin.headers,
    )
    assert resp.json() == {"inserted": 50}
    rows = (
        await conn.execute(text("SELECT code FROM codes WHERE book_id = :b"), {"b": book["id"]})
    ).all()
    assert all(re.fullmatch(r"VIP-[2-9A-HJKMNP-Z]{6}", r[0]) for r in rows)


async def test_generate_pattern_too_small_is_422_and_writes_nothing(
    client: httpx.AsyncClient, admin: ApiUser, conn: AsyncConnection
) -> None:
    book = await make_book(client, admin)
    for body in (
        {"count": 9, "pattern": "X#"},
        {"count": 1, "pattern": "bad pattern"},
        {"count": 0, "pattern": "##"},
        {"count": "5", "pattern": "##"},
    ):
        resp = await client.post(
            f"{API}/books/{book['id']}/codes/generate", json=body, headers=admin.headers
        )
        assert_problem(resp, 422, "validation-error")
    assert await history_count(conn, book["id"]) == 0
    count = (
        await conn.execute(text("SELECT count(*) FROM codes WHERE book_id = :b"), {"b": book["id"]})
    ).scalar_one()
    assert count == 0


async def test_generate_fills_a_small_pattern_exactly(
    client: httpx.AsyncClient, admin: ApiUser
) -> None:
    book = await make_book(client, admin)
    tag = "G" + unique_codes(1)[0].replace("-", "")[:8]
    resp = await client.post(
        f"{API}/books/{book['id']}/codes/generate",
        json={"count": 64, "pattern": f"{tag}##"},
        headers=admin.headers,
    )
    assert resp.json() == {"inserted": 64}


def test_draws_grow_from_the_count_to_one_batch() -> None:
    huge = 31**8
    assert draws(1, huge, 0) == 17
    assert draws(1000, huge, 0) == 1116
    assert draws(1000, huge, 1) == 4464
    assert draws(1000, huge, 16) == draws(1000, huge, 99) == 250_000
    assert draws(64, 64, 0) == 86 and draws(64, 64, 3) == 512


async def test_generating_one_code_draws_a_handful(
    client: httpx.AsyncClient, admin: ApiUser, monkeypatch: pytest.MonkeyPatch
) -> None:
    sizes: list[int] = []

    def recording(slots: list[bytes], n: int) -> bytes:
        sizes.append(n)
        return make_batch(slots, n)

    monkeypatch.setattr(generate, "make_batch", recording)
    book = await make_book(client, admin)
    resp = await client.post(
        f"{API}/books/{book['id']}/codes/generate",
        json={"count": 1, "pattern": "ONE-********"},
        headers=admin.headers,
    )
    assert resp.json() == {"inserted": 1}
    assert sizes == [17]


def test_make_batch_uses_only_unambiguous_characters() -> None:
    data = make_batch(slots_for(GenerateIn(count=1, pattern="*" * 20)), 2000)
    assert set(data) - set(b"23456789ABCDEFGHJKMNPQRSTUVWXYZ\n") == set()


async def test_export_csv_streams_every_code_with_formula_guard(
    client: httpx.AsyncClient, admin: ApiUser, user: ApiUser
) -> None:
    book = await make_book(client, admin)
    codes = ["-MINUS-" + unique_codes(1)[0], *unique_codes(3)]
    await fill(client, admin, book["id"], codes)
    await client.post(f"{API}/books/{book['id']}/assign", headers=user.headers)
    resp = await client.get(f"{API}/books/{book['id']}/codes.csv", headers=admin.headers)
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(resp.text)))
    assert rows[0] == ["code", "status", "user_id", "assigned_at", "redemptions"]
    assert len(rows) == 5
    exported = {r[0] for r in rows[1:]}
    assert "'" + codes[0] in exported
    assigned = [r for r in rows[1:] if r[1] == "assigned"]
    assert len(assigned) == 1 and assigned[0][2] == str(user.id) and assigned[0][3].endswith("Z")


def test_cell_guards_formulas() -> None:
    assert cell("=1+1") == "'=1+1"
    assert cell("+x") == "'+x"
    assert cell("@x") == "'@x"
    assert cell("a,b") == '"a,b"'
    assert cell(None) == ""


async def test_distribute_to_user_list_in_ascending_order(
    client: httpx.AsyncClient, admin: ApiUser, make_user: MakeUser, conn: AsyncConnection
) -> None:
    book = await make_book(client, admin)
    await fill(client, admin, book["id"], unique_codes(3))
    users = [await make_user() for _ in range(5)]
    holder = users[0]
    await client.post(f"{API}/books/{book['id']}/assign", headers=holder.headers)
    unknown = "00000000-0000-0000-0000-000000000009"
    resp = await client.post(
        f"{API}/books/{book['id']}/distribute",
        json={"user_ids": [str(u.id) for u in users] + [unknown, str(users[1].id)]},
        headers=admin.headers,
    )
    assert resp.status_code == 200, resp.text
    assert resp.json() == {
        "assigned": 2,
        "skipped": {"limit_reached": 1, "exhausted": 2, "unknown_users": 1},
    }
    served = sorted(str(u.id) for u in users[1:])[:2]
    rows = (
        await conn.execute(
            text("SELECT user_id::text FROM codes WHERE book_id = :b AND user_id <> :h"),
            {"b": book["id"], "h": holder.id},
        )
    ).all()
    assert sorted(r[0] for r in rows) == served
    assert await history_count(conn, book["id"], "assigned") == 3


async def test_distribute_to_static_and_rule_segments(
    client: httpx.AsyncClient, admin: ApiUser, make_user: MakeUser, conn: AsyncConnection
) -> None:
    book = await make_book(client, admin)
    await fill(client, admin, book["id"], unique_codes(10))
    members = [await make_user() for _ in range(3)]
    seg = await conn.execute(
        text("INSERT INTO segments (name, kind) VALUES ('s', 'static') RETURNING id")
    )
    seg_id = seg.scalar_one()
    for m in members:
        await conn.execute(
            text("INSERT INTO segment_members (segment_id, user_id) VALUES (:s, :u)"),
            {"s": seg_id, "u": m.id},
        )
    resp = await client.post(
        f"{API}/books/{book['id']}/distribute",
        json={"segment_id": str(seg_id)},
        headers=admin.headers,
    )
    assert resp.json()["assigned"] == 3, resp.text
    tag = unique_codes(1)[0].lower()
    tagged = [await make_user() for _ in range(2)]
    for t in tagged:
        await conn.execute(
            text("UPDATE users SET tags = ARRAY[:t] WHERE id = :u"), {"t": tag, "u": t.id}
        )
    rule = await conn.execute(
        text(
            "INSERT INTO segments (name, kind, rules) VALUES ('r', 'rule', CAST(:r AS jsonb))"
            " RETURNING id"
        ),
        {"r": f'{{"tags_any": ["{tag}"]}}'},
    )
    resp = await client.post(
        f"{API}/books/{book['id']}/distribute",
        json={"segment_id": str(rule.scalar_one())},
        headers=admin.headers,
    )
    assert resp.json()["assigned"] == 2, resp.text


async def test_distribute_errors(
    client: httpx.AsyncClient, admin: ApiUser, make_user: MakeUser
) -> None:
    book = await make_book(client, admin)
    url = f"{API}/books/{book['id']}/distribute"
    assert_problem(await client.post(url, json={}, headers=admin.headers), 422, "validation-error")
    missing = await client.post(
        url, json={"segment_id": "00000000-0000-0000-0000-000000000000"}, headers=admin.headers
    )
    assert_problem(missing, 404, "not-found")
    await client.patch(
        f"{API}/books/{book['id']}", json={"status": "paused"}, headers=admin.headers
    )
    user = await make_user(Role.user)
    paused = await client.post(url, json={"user_ids": [str(user.id)]}, headers=admin.headers)
    assert_problem(paused, 409, "book-inactive")
    forbidden = await client.post(url, json={"user_ids": [str(user.id)]}, headers=user.headers)
    assert_problem(forbidden, 403, "forbidden")


async def test_assign_and_redeem_idempotency_keys(
    client: httpx.AsyncClient, admin: ApiUser, user: ApiUser, conn: AsyncConnection
) -> None:
    book = await make_book(client, admin, max_codes_per_user=5, max_redemptions_per_code=5)
    await fill(client, admin, book["id"], unique_codes(5))
    headers = {**user.headers, "Idempotency-Key": "assign-1"}
    first = await client.post(f"{API}/books/{book['id']}/assign", headers=headers)
    second = await client.post(f"{API}/books/{book['id']}/assign", headers=headers)
    assert first.status_code == second.status_code == 201
    assert first.json() == second.json()
    code = first.json()["code"]
    redeem_headers = {**user.headers, "Idempotency-Key": "redeem-1"}
    r1 = await client.post(f"{API}/codes/{code}/redeem", json={}, headers=redeem_headers)
    r2 = await client.post(f"{API}/codes/{code}/redeem", json={}, headers=redeem_headers)
    assert r1.json() == r2.json() and r2.headers["idempotent-replayed"] == "true"
    reused = await client.post(
        f"{API}/codes/{code}/redeem", json={"order_ref": "x"}, headers=redeem_headers
    )
    assert_problem(reused, 422, "idempotency-key-reused")
    assert await history_count(conn, book["id"]) == 2
