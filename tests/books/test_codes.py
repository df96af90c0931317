from __future__ import annotations

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from tests.books.flows import assign, book_with_codes
from tests.books.helpers import API, history_count
from tests.conftest import MakeUser
from tests.helpers import ApiUser, assert_problem


async def test_other_users_code_is_404(
    client: httpx.AsyncClient, admin: ApiUser, user: ApiUser, make_user: MakeUser
) -> None:
    book, _ = await book_with_codes(client, admin)
    code = (await assign(client, user, book["id"]))["code"]
    other = await make_user()
    for method, path in (
        ("GET", ""),
        ("POST", "/lock"),
        ("POST", "/unlock"),
        ("POST", "/redeem"),
        ("POST", "/validate"),
    ):
        resp = await client.request(method, f"{API}/codes/{code}{path}", headers=other.headers)
        assert_problem(resp, 404, "not-found")
    assert (await client.get(f"{API}/codes/{code}", headers=admin.headers)).status_code == 200


async def test_lock_then_redeem_with_lock_id(
    client: httpx.AsyncClient, admin: ApiUser, user: ApiUser, conn: AsyncConnection
) -> None:
    book, _ = await book_with_codes(client, admin)
    code = (await assign(client, user, book["id"]))["code"]
    locked = await client.post(f"{API}/codes/{code}/lock", headers=user.headers)
    assert locked.status_code == 200, locked.text
    lock = locked.json()
    assert lock["status"] == "locked" and lock["lock_id"] and lock["locked_until"]
    again = await client.post(f"{API}/codes/{code}/lock", headers=user.headers)
    assert_problem(again, 409, "code-locked")
    no_id = await client.post(f"{API}/codes/{code}/redeem", json={}, headers=user.headers)
    assert_problem(no_id, 409, "code-locked")
    check = await client.post(f"{API}/codes/{code}/validate", json={}, headers=user.headers)
    assert check.json() == {"redeemable": False, "problem": "code-locked"}
    check = await client.post(
        f"{API}/codes/{code}/validate", json={"lock_id": lock["lock_id"]}, headers=user.headers
    )
    assert check.json() == {"redeemable": True, "problem": None}
    resp = await client.post(
        f"{API}/codes/{code}/redeem",
        json={"lock_id": lock["lock_id"], "order_ref": "ORD-1", "metadata": {"k": 1}},
        headers=user.headers,
    )
    assert resp.status_code == 200, resp.text
    out = resp.json()
    assert out["code"] == code and out["redemptions"] == 1 and out["redemptions_left"] == 0
    assert isinstance(out["redemption_id"], int)
    after = (await client.get(f"{API}/codes/{code}", headers=user.headers)).json()
    assert after["status"] == "redeemed" and after["locked_until"] is None
    twice = await client.post(f"{API}/codes/{code}/redeem", headers=user.headers)
    assert_problem(twice, 409, "redemption-limit-reached")
    assert await history_count(conn, book["id"]) == 3  # assigned, locked, redeemed


async def test_lock_extend_with_live_lock_id_and_ttl_bounds(
    client: httpx.AsyncClient, admin: ApiUser, user: ApiUser
) -> None:
    book, _ = await book_with_codes(client, admin, lock_ttl_seconds=120)
    code = (await assign(client, user, book["id"]))["code"]
    too_long = await client.post(
        f"{API}/codes/{code}/lock", json={"ttl_seconds": 121}, headers=user.headers
    )
    assert_problem(too_long, 422, "validation-error")
    first = (
        await client.post(
            f"{API}/codes/{code}/lock", json={"ttl_seconds": 10}, headers=user.headers
        )
    ).json()
    extended = await client.post(
        f"{API}/codes/{code}/lock",
        json={"lock_id": first["lock_id"], "ttl_seconds": 100},
        headers=user.headers,
    )
    assert extended.status_code == 200, extended.text
    assert extended.json()["lock_id"] == first["lock_id"]
    assert extended.json()["locked_until"] > first["locked_until"]


async def test_unlock_rules(
    client: httpx.AsyncClient, admin: ApiUser, user: ApiUser, conn: AsyncConnection
) -> None:
    book, _ = await book_with_codes(client, admin)
    code = (await assign(client, user, book["id"]))["code"]
    harmless = await client.post(f"{API}/codes/{code}/unlock", headers=user.headers)
    assert harmless.status_code == 200 and harmless.json()["status"] == "assigned"
    lock = (await client.post(f"{API}/codes/{code}/lock", headers=user.headers)).json()
    wrong = await client.post(
        f"{API}/codes/{code}/unlock",
        json={"lock_id": "00000000-0000-0000-0000-000000000000"},
        headers=user.headers,
    )
    assert_problem(wrong, 409, "code-locked")
    ok = await client.post(
        f"{API}/codes/{code}/unlock", json={"lock_id": lock["lock_id"]}, headers=user.headers
    )
    assert ok.status_code == 200 and ok.json()["status"] == "assigned"
    await client.post(f"{API}/codes/{code}/lock", headers=user.headers)
    by_admin = await client.post(f"{API}/codes/{code}/unlock", headers=admin.headers)
    assert by_admin.status_code == 200 and by_admin.json()["status"] == "assigned"
    # assigned, locked, unlocked, locked, unlocked: the harmless unlock wrote nothing
    assert await history_count(conn, book["id"]) == 5


async def test_lapsed_lock_reads_assigned_and_needs_no_lock_id(
    client: httpx.AsyncClient, admin: ApiUser, user: ApiUser, conn: AsyncConnection
) -> None:
    book, _ = await book_with_codes(client, admin)
    code = (await assign(client, user, book["id"]))["code"]
    await client.post(f"{API}/codes/{code}/lock", headers=user.headers)
    await conn.execute(
        text("UPDATE codes SET locked_until = now() - interval '1 second' WHERE code = :c"),
        {"c": code},
    )
    got = (await client.get(f"{API}/codes/{code}", headers=user.headers)).json()
    assert got["status"] == "assigned" and got["locked_until"] is None
    stats = (await client.get(f"{API}/books/{book['id']}", headers=admin.headers)).json()["stats"]
    assert stats["locked"] == 0 and stats["assigned"] == 1
    resp = await client.post(
        f"{API}/codes/{code}/redeem",
        json={"lock_id": "00000000-0000-0000-0000-000000000000"},
        headers=user.headers,
    )
    assert resp.status_code == 200, resp.text


async def test_lock_or_redeem_unassigned_code_is_409(
    client: httpx.AsyncClient, admin: ApiUser
) -> None:
    _, codes = await book_with_codes(client, admin)
    assert_problem(
        await client.post(f"{API}/codes/{codes[0]}/lock", headers=admin.headers),
        409,
        "code-not-assigned",
    )
    assert_problem(
        await client.post(f"{API}/codes/{codes[0]}/redeem", headers=admin.headers),
        409,
        "code-not-assigned",
    )
    check = await client.post(f"{API}/codes/{codes[0]}/validate", headers=admin.headers)
    assert check.json() == {"redeemable": False, "problem": "code-not-assigned"}


async def test_multi_use_code_and_user_limit(
    client: httpx.AsyncClient, admin: ApiUser, user: ApiUser
) -> None:
    book, _ = await book_with_codes(
        client, admin, max_codes_per_user=2, max_redemptions_per_code=3, max_redemptions_per_user=4
    )
    first = (await assign(client, user, book["id"]))["code"]
    second = (await assign(client, user, book["id"]))["code"]
    for i in range(3):
        resp = await client.post(f"{API}/codes/{first}/redeem", headers=user.headers)
        assert resp.status_code == 200, resp.text
        assert resp.json()["redemptions_left"] == 2 - i
        status = (await client.get(f"{API}/codes/{first}", headers=user.headers)).json()["status"]
        assert status == ("redeemed" if i == 2 else "assigned")
    assert_problem(
        await client.post(f"{API}/codes/{first}/redeem", headers=user.headers),
        409,
        "redemption-limit-reached",
    )
    assert (
        await client.post(f"{API}/codes/{second}/redeem", headers=user.headers)
    ).status_code == 200
    assert_problem(
        await client.post(f"{API}/codes/{second}/redeem", headers=user.headers),
        409,
        "user-redemption-limit-reached",
    )


async def test_redeem_in_inactive_book_is_409(
    client: httpx.AsyncClient, admin: ApiUser, user: ApiUser
) -> None:
    book, _ = await book_with_codes(client, admin)
    code = (await assign(client, user, book["id"]))["code"]
    await client.patch(
        f"{API}/books/{book['id']}", json={"status": "archived"}, headers=admin.headers
    )
    assert_problem(
        await client.post(f"{API}/codes/{code}/redeem", headers=user.headers), 409, "book-inactive"
    )


async def test_rollback_reverses_one_redemption_once(
    client: httpx.AsyncClient, admin: ApiUser, user: ApiUser, conn: AsyncConnection
) -> None:
    book, _ = await book_with_codes(client, admin)
    code = (await assign(client, user, book["id"]))["code"]
    redemption = (await client.post(f"{API}/codes/{code}/redeem", headers=user.headers)).json()
    body = {"redemption_id": redemption["redemption_id"], "reason": "payment failed"}
    forbidden = await client.post(f"{API}/codes/{code}/rollback", json=body, headers=user.headers)
    assert_problem(forbidden, 403, "forbidden")
    resp = await client.post(f"{API}/codes/{code}/rollback", json=body, headers=admin.headers)
    assert resp.status_code == 200, resp.text
    assert resp.json()["status"] == "assigned" and resp.json()["redemptions"] == 0
    again = await client.post(f"{API}/codes/{code}/rollback", json=body, headers=admin.headers)
    assert_problem(again, 409, "not-redeemed")
    unknown = await client.post(
        f"{API}/codes/{code}/rollback", json={"redemption_id": 999999999}, headers=admin.headers
    )
    assert_problem(unknown, 409, "not-redeemed")
    assert (
        await client.post(f"{API}/codes/{code}/redeem", headers=user.headers)
    ).status_code == 200
    assert await history_count(conn, book["id"], "rolled_back") == 1


async def test_history_filters_and_me_history(
    client: httpx.AsyncClient, admin: ApiUser, user: ApiUser, make_user: MakeUser
) -> None:
    book, _ = await book_with_codes(client, admin)
    code = (await assign(client, user, book["id"]))["code"]
    await assign(client, await make_user(), book["id"])
    await client.post(f"{API}/codes/{code}/redeem", headers=user.headers)
    all_rows = (
        await client.get(f"{API}/history?book_id={book['id']}", headers=admin.headers)
    ).json()["items"]
    assert [r["action"] for r in all_rows] == ["redeemed", "assigned", "assigned"]
    assert all_rows[0]["code"] == code and all_rows[0]["actor_id"] == str(user.id)
    by_code = (
        await client.get(
            f"{API}/history?code={code.lower()}&action=assigned", headers=admin.headers
        )
    ).json()["items"]
    assert len(by_code) == 1
    page1 = (
        await client.get(f"{API}/history?book_id={book['id']}&limit=2", headers=admin.headers)
    ).json()
    page2 = (
        await client.get(
            f"{API}/history?book_id={book['id']}&limit=2&cursor={page1['next_cursor']}",
            headers=admin.headers,
        )
    ).json()
    assert [r["id"] for r in page1["items"] + page2["items"]] == [r["id"] for r in all_rows]
    assert page2["next_cursor"] is None
    mine = (await client.get(f"{API}/me/history", headers=user.headers)).json()["items"]
    assert {r["user_id"] for r in mine} == {str(user.id)} and len(mine) == 2
    assert_problem(await client.get(f"{API}/history", headers=user.headers), 403, "forbidden")


async def test_history_is_append_only(
    client: httpx.AsyncClient, admin: ApiUser, user: ApiUser, conn: AsyncConnection
) -> None:
    book, _ = await book_with_codes(client, admin)
    await assign(client, user, book["id"])
    for sql in (
        "UPDATE redemption_history SET action = 'locked'",
        "DELETE FROM redemption_history",
    ):
        nested = await conn.begin_nested()
        try:
            await conn.execute(text(sql))
            raise AssertionError(f"{sql} was allowed")
        except Exception as exc:
            assert "append-only" in str(exc)
        finally:
            await nested.rollback()


async def test_list_book_codes_filters_and_pages(
    client: httpx.AsyncClient, admin: ApiUser, user: ApiUser
) -> None:
    book, codes = await book_with_codes(client, admin, n=5)
    code = (await assign(client, user, book["id"]))["code"]
    url = f"{API}/books/{book['id']}/codes"
    assigned = (await client.get(f"{url}?status=assigned", headers=admin.headers)).json()
    assert [c["code"] for c in assigned["items"]] == [code]
    seen: list[str] = []
    cursor = None
    while True:
        page = (
            await client.get(
                f"{url}?limit=2" + (f"&cursor={cursor}" if cursor else ""), headers=admin.headers
            )
        ).json()
        seen += [c["code"] for c in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert sorted(seen) == sorted(codes)
    bad = await client.get(f"{url}?cursor=!!!", headers=admin.headers)
    assert_problem(bad, 422, "validation-error")


async def test_validate_names_each_problem_without_changing_anything(
    client: httpx.AsyncClient, admin: ApiUser, user: ApiUser, conn: AsyncConnection
) -> None:
    book, _ = await book_with_codes(client, admin, max_codes_per_user=2, max_redemptions_per_user=1)
    first = (await assign(client, user, book["id"]))["code"]
    second = (await assign(client, user, book["id"]))["code"]
    ok = await client.post(f"{API}/codes/{first}/validate", headers=user.headers)
    assert ok.json() == {"redeemable": True, "problem": None}
    await client.post(f"{API}/codes/{first}/redeem", headers=user.headers)
    limited = await client.post(f"{API}/codes/{second}/validate", headers=user.headers)
    assert limited.json()["problem"] == "user-redemption-limit-reached"
    await client.patch(
        f"{API}/books/{book['id']}", json={"status": "paused"}, headers=admin.headers
    )
    paused = await client.post(f"{API}/codes/{second}/validate", headers=user.headers)
    assert paused.json()["problem"] == "book-inactive"
    assert await history_count(conn, book["id"]) == 3


async def test_relock_after_lapse_gets_a_new_lock_id(
    client: httpx.AsyncClient, admin: ApiUser, user: ApiUser, conn: AsyncConnection
) -> None:
    book, _ = await book_with_codes(client, admin)
    code = (await assign(client, user, book["id"]))["code"]
    first = (await client.post(f"{API}/codes/{code}/lock", headers=user.headers)).json()
    await conn.execute(
        text("UPDATE codes SET locked_until = now() - interval '1 second' WHERE code = :c"),
        {"c": code},
    )
    second = await client.post(
        f"{API}/codes/{code}/lock", json={"lock_id": first["lock_id"]}, headers=user.headers
    )
    assert second.status_code == 200, second.text
    assert second.json()["lock_id"] != first["lock_id"]


async def test_bad_input_is_a_clear_problem(
    client: httpx.AsyncClient, admin: ApiUser, user: ApiUser
) -> None:
    book, _ = await book_with_codes(client, admin)
    code = (await assign(client, user, book["id"]))["code"]
    for body in ({"ttl_seconds": "5"}, {"ttl_seconds": 1.5}, {"lock_id": "nope"}, {"x": 1}):
        resp = await client.post(f"{API}/codes/{code}/lock", json=body, headers=user.headers)
        assert_problem(resp, 422, "validation-error")
    resp = await client.post(
        f"{API}/codes/{code}/redeem", json={"order_ref": "a\x00b"}, headers=user.headers
    )
    assert_problem(resp, 422, "validation-error")
    resp = await client.post(
        f"{API}/codes/{code}/redeem",
        content=b'{"metadata": {"x": NaN}}',
        headers={**user.headers, "Content-Type": "application/json"},
    )
    assert resp.status_code in (400, 422), resp.text
    assert_problem(await client.get(f"{API}/codes/a%00b", headers=user.headers), 404, "not-found")
    assert_problem(
        await client.get(f"{API}/codes/{'A' * 65}", headers=user.headers), 404, "not-found"
    )
    resp = await client.post(
        f"{API}/codes/{code}/rollback", json={"redemption_id": "1"}, headers=admin.headers
    )
    assert_problem(resp, 422, "validation-error")


async def test_me_codes_filters_by_book_and_status(
    client: httpx.AsyncClient, admin: ApiUser, user: ApiUser
) -> None:
    book_a, _ = await book_with_codes(client, admin)
    book_b, _ = await book_with_codes(client, admin)
    code_a = (await assign(client, user, book_a["id"]))["code"]
    code_b = (await assign(client, user, book_b["id"]))["code"]
    await client.post(f"{API}/codes/{code_b}/lock", headers=user.headers)
    by_book = await client.get(f"{API}/me/codes?book_id={book_a['id']}", headers=user.headers)
    assert [c["code"] for c in by_book.json()["items"]] == [code_a]
    locked = await client.get(f"{API}/me/codes?status=locked", headers=user.headers)
    assert [c["code"] for c in locked.json()["items"]] == [code_b]
    bad = await client.get(f"{API}/me/codes?status=lost", headers=user.headers)
    assert_problem(bad, 422, "validation-error")
