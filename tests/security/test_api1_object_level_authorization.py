"""API1:2023 Broken object level authorization: every route that takes the id or code of
something a user owns answers another user exactly as it answers an unknown id (404
`not-found`), and changes nothing."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from tests.conftest import MakeUser
from tests.helpers import ApiUser, assert_problem
from tests.security.support import (
    API,
    code_row,
    held_code,
    held_reservation,
    history_rows,
    notification_for,
    reservation_status,
)

CODE_ACTIONS = [
    pytest.param("GET", "", None, id="get"),
    pytest.param("POST", "/lock", {}, id="lock"),
    pytest.param("POST", "/unlock", {}, id="unlock"),
    pytest.param("POST", "/redeem", {"order_ref": "ORD-1"}, id="redeem"),
    pytest.param("POST", "/validate", {}, id="validate"),
]


def _shape(problem: dict[str, Any]) -> tuple[object, ...]:
    return problem["status"], problem["type"], problem["title"], sorted(problem)


@pytest.mark.parametrize(("method", "suffix", "body"), CODE_ACTIONS)
async def test_another_users_code_is_not_found_and_unchanged(
    client: httpx.AsyncClient,
    conn: AsyncConnection,
    admin: ApiUser,
    make_user: MakeUser,
    method: str,
    suffix: str,
    body: dict[str, Any] | None,
) -> None:
    owner, intruder = await make_user(), await make_user()
    code = str((await held_code(client, admin, owner))["code"])
    before, history_before = await code_row(conn, code), await history_rows(conn, code)

    for spelled in (code, code.lower()):
        resp = await client.request(
            method, f"{API}/codes/{spelled}{suffix}", json=body, headers=intruder.headers
        )
        probe = assert_problem(resp, 404, "not-found")
        assert str(owner.id) not in resp.text
        unknown = await client.request(
            method,
            f"{API}/codes/NO-SUCH-{uuid.uuid4().hex[:8]}{suffix}",
            json=body,
            headers=intruder.headers,
        )
        assert _shape(assert_problem(unknown, 404, "not-found")) == _shape(probe)

    assert await code_row(conn, code) == before
    assert await history_rows(conn, code) == history_before


async def test_another_users_lock_cannot_be_released_or_redeemed(
    client: httpx.AsyncClient, conn: AsyncConnection, admin: ApiUser, make_user: MakeUser
) -> None:
    owner, intruder = await make_user(), await make_user()
    code = str((await held_code(client, admin, owner))["code"])
    locked = await client.post(f"{API}/codes/{code}/lock", json={}, headers=owner.headers)
    assert locked.status_code == 200, locked.text
    lock_id = locked.json()["lock_id"]
    before = await code_row(conn, code)
    assert before["status"] == "locked"

    for action, body in (
        ("unlock", {"lock_id": lock_id}),
        ("redeem", {"lock_id": lock_id}),
        ("lock", {"lock_id": lock_id, "ttl_seconds": 5}),
        ("validate", {"lock_id": lock_id}),
    ):
        resp = await client.post(
            f"{API}/codes/{code}/{action}", json=body, headers=intruder.headers
        )
        assert_problem(resp, 404, "not-found")
    assert await code_row(conn, code) == before


async def test_another_users_code_cannot_be_claimed(
    client: httpx.AsyncClient, conn: AsyncConnection, admin: ApiUser, make_user: MakeUser
) -> None:
    owner, intruder = await make_user(), await make_user()
    code = str((await held_code(client, admin, owner))["code"])
    before = await code_row(conn, code)
    resp = await client.post(f"{API}/codes/{code}/assign", json={}, headers=intruder.headers)
    assert resp.status_code in (404, 409), resp.text
    assert resp.json()["type"].rsplit("/", 1)[1] in ("not-found", "code-unavailable")
    assert "user_id" not in resp.json() and str(owner.id) not in resp.text
    assert await code_row(conn, code) == before


async def test_codes_lists_show_only_the_callers_codes(
    client: httpx.AsyncClient, admin: ApiUser, make_user: MakeUser
) -> None:
    owner, intruder = await make_user(), await make_user()
    code = str((await held_code(client, admin, owner))["code"])
    mine = await client.get(f"{API}/me/codes", headers=intruder.headers)
    assert mine.status_code == 200 and mine.json()["items"] == []
    history = await client.get(f"{API}/me/history", headers=intruder.headers)
    assert history.status_code == 200 and code not in history.text


async def test_another_users_idempotency_key_replays_nothing(
    client: httpx.AsyncClient, conn: AsyncConnection, admin: ApiUser, make_user: MakeUser
) -> None:
    owner, intruder = await make_user(), await make_user()
    code = str((await held_code(client, admin, owner))["code"])
    key = {"Idempotency-Key": f"k-{uuid.uuid4().hex}"}
    redeemed = await client.post(
        f"{API}/codes/{code}/redeem", json={}, headers={**owner.headers, **key}
    )
    assert redeemed.status_code == 200, redeemed.text
    before = await code_row(conn, code)
    replay = await client.post(
        f"{API}/codes/{code}/redeem", json={}, headers={**intruder.headers, **key}
    )
    assert_problem(replay, 404, "not-found")
    assert await code_row(conn, code) == before


@pytest.mark.parametrize(
    ("method", "suffix"),
    [
        pytest.param("GET", "", id="get"),
        pytest.param("POST", "/purchase", id="purchase"),
        pytest.param("POST", "/cancel", id="cancel"),
    ],
)
async def test_another_users_reservation_is_not_found_and_unchanged(
    client: httpx.AsyncClient,
    conn: AsyncConnection,
    admin: ApiUser,
    make_user: MakeUser,
    method: str,
    suffix: str,
) -> None:
    owner, intruder = await make_user(), await make_user()
    held = await held_reservation(client, admin, owner, quantity=2)
    resp = await client.request(
        method, f"{API}/reservations/{held['id']}{suffix}", headers=intruder.headers
    )
    probe = assert_problem(resp, 404, "not-found")
    unknown = await client.request(
        method, f"{API}/reservations/{uuid.uuid4()}{suffix}", headers=intruder.headers
    )
    assert _shape(assert_problem(unknown, 404, "not-found")) == _shape(probe)
    assert await reservation_status(conn, str(held["id"])) == "held"
    theirs = await client.get(f"{API}/me/reservations", headers=intruder.headers)
    assert theirs.status_code == 200 and theirs.json()["items"] == []


async def test_another_users_notification_cannot_be_marked_read(
    client: httpx.AsyncClient, conn: AsyncConnection, make_user: MakeUser
) -> None:
    owner, intruder = await make_user(), await make_user()
    notification = await notification_for(conn, owner)
    resp = await client.post(
        f"{API}/me/notifications/{notification}/read", headers=intruder.headers
    )
    probe = assert_problem(resp, 404, "not-found")
    unknown = await client.post(
        f"{API}/me/notifications/{notification + 10_000_000}/read", headers=intruder.headers
    )
    assert _shape(assert_problem(unknown, 404, "not-found")) == _shape(probe)
    row = (
        await conn.execute(
            text("SELECT status, read_at FROM notifications WHERE id = :id"), {"id": notification}
        )
    ).one()
    assert row.status == "unread" and row.read_at is None
    inbox = await client.get(f"{API}/me/notifications", headers=intruder.headers)
    assert inbox.status_code == 200 and inbox.json()["items"] == []
