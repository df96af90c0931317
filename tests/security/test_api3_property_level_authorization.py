"""API3:2023 Broken object property level authorization: bodies cannot set properties the
caller may not write (mass assignment), and responses never expose secrets."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from tests.conftest import MakeUser
from tests.helpers import ApiUser, assert_problem
from tests.promos.support import create_promo, window
from tests.security.support import API, code_row, held_code, held_reservation


def _refused(resp: httpx.Response, field: str) -> None:
    """Mass assignment is refused with 422 naming the field, never applied silently."""
    problem = assert_problem(resp, 422, "validation-error")
    locs = [e["loc"] for e in problem["errors"]]  # type: ignore[attr-defined]
    assert any(field in loc for loc in locs), locs


@pytest.mark.parametrize(
    "extra",
    [
        {"role": "admin"},
        {"role": "user", "id": "00000000-0000-0000-0000-000000000001"},
        {"is_admin": True},
        {"password_hash": "$argon2id$v=19$m=1,t=1,p=1$AAAA$AAAA"},
        {"created_at": "2000-01-01T00:00:00Z"},
    ],
    ids=["role", "id", "is_admin", "password_hash", "created_at"],
)
async def test_register_refuses_privileged_fields(
    client: httpx.AsyncClient, conn: AsyncConnection, extra: dict[str, Any]
) -> None:
    email = f"mass-{uuid.uuid4().hex[:8]}@example.com"
    resp = await client.post(
        f"{API}/auth/register", json={"email": email, "password": "correct horse", **extra}
    )
    _refused(resp, next(iter(extra)))
    count = (
        await conn.execute(text("SELECT count(*) FROM users WHERE email = :e"), {"e": email})
    ).scalar_one()
    assert count == 0


@pytest.mark.parametrize(
    ("url", "body", "field"),
    [
        ("/me/profile", {"role": "admin"}, "role"),
        ("/me/profile", {"email": "other@example.com"}, "email"),
        ("/me/profile", {"id": "00000000-0000-0000-0000-000000000001"}, "id"),
        ("/me/location", {"lat": 1.0, "lng": 1.0, "role": "admin"}, "role"),
        (
            "/me/location",
            {"lat": 1.0, "lng": 1.0, "location_updated_at": "2000-01-01T00:00:00Z"},
            "location_updated_at",
        ),
    ],
)
async def test_profile_updates_refuse_privileged_fields(
    client: httpx.AsyncClient,
    conn: AsyncConnection,
    user: ApiUser,
    url: str,
    body: dict[str, Any],
    field: str,
) -> None:
    _refused(await client.put(f"{API}{url}", json=body, headers=user.headers), field)
    row = (
        await conn.execute(text("SELECT role, email FROM users WHERE id = :id"), {"id": user.id})
    ).one()
    assert row.role == "user" and row.email == user.email


async def test_role_can_only_be_changed_by_an_admin_and_nothing_else_with_it(
    client: httpx.AsyncClient, conn: AsyncConnection, admin: ApiUser, user: ApiUser
) -> None:
    own = await client.patch(f"{API}/users/{user.id}", json={"role": "admin"}, headers=user.headers)
    assert_problem(own, 403, "forbidden")
    extra = await client.patch(
        f"{API}/users/{user.id}",
        json={"role": "user", "email": "taken@example.com", "password_hash": "x"},
        headers=admin.headers,
    )
    _refused(extra, "email")
    row = (
        await conn.execute(text("SELECT role, email FROM users WHERE id = :id"), {"id": user.id})
    ).one()
    assert row.role == "user" and row.email == user.email


@pytest.mark.parametrize(
    ("action", "body", "field"),
    [
        ("lock", {"status": "unassigned"}, "status"),
        ("lock", {"user_id": "00000000-0000-0000-0000-000000000001"}, "user_id"),
        ("unlock", {"status": "assigned", "locked_until": None}, "status"),
        ("redeem", {"redemptions": 0}, "redemptions"),
        ("redeem", {"redemptions_left": 99}, "redemptions_left"),
        ("redeem", {"user_id": "00000000-0000-0000-0000-000000000001"}, "user_id"),
        ("validate", {"status": "assigned"}, "status"),
    ],
)
async def test_code_actions_refuse_state_fields(
    client: httpx.AsyncClient,
    conn: AsyncConnection,
    admin: ApiUser,
    user: ApiUser,
    action: str,
    body: dict[str, Any],
    field: str,
) -> None:
    code = str((await held_code(client, admin, user))["code"])
    before = await code_row(conn, code)
    resp = await client.post(f"{API}/codes/{code}/{action}", json=body, headers=user.headers)
    _refused(resp, field)
    assert await code_row(conn, code) == before


async def test_a_user_cannot_assign_codes_to_someone_else(
    client: httpx.AsyncClient,
    conn: AsyncConnection,
    admin: ApiUser,
    make_user: MakeUser,
) -> None:
    owner, victim = await make_user(), await make_user()
    code = await held_code(client, admin, owner)
    book_id = str(code["book_id"])
    random_assign = await client.post(
        f"{API}/books/{book_id}/assign", json={"user_id": str(victim.id)}, headers=owner.headers
    )
    assert_problem(random_assign, 403, "forbidden")
    listed = await client.get(f"{API}/books/{book_id}/codes", headers=admin.headers)
    free = next(c["code"] for c in listed.json()["items"] if c["status"] == "unassigned")
    specific = await client.post(
        f"{API}/codes/{free}/assign", json={"user_id": str(victim.id)}, headers=owner.headers
    )
    assert_problem(specific, 403, "forbidden")
    held_by_victim = (
        await conn.execute(text("SELECT count(*) FROM codes WHERE user_id = :u"), {"u": victim.id})
    ).scalar_one()
    assert held_by_victim == 0


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"status": "archived"}, "status"),
        ({"stats": {"redeemed": 0}}, "stats"),
        ({"id": "00000000-0000-0000-0000-000000000001"}, "id"),
        ({"created_at": "2000-01-01T00:00:00Z"}, "created_at"),
        ({"redemptions": 5}, "redemptions"),
    ],
)
async def test_book_creation_refuses_server_owned_fields(
    client: httpx.AsyncClient, admin: ApiUser, body: dict[str, Any], field: str
) -> None:
    resp = await client.post(f"{API}/books", json={"name": "b", **body}, headers=admin.headers)
    _refused(resp, field)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"stats": {"redeemed": 0}}, "stats"),
        ({"id": "00000000-0000-0000-0000-000000000001"}, "id"),
        ({"user_id": "00000000-0000-0000-0000-000000000001"}, "user_id"),
    ],
)
async def test_book_patch_refuses_server_owned_fields(
    client: httpx.AsyncClient, admin: ApiUser, user: ApiUser, body: dict[str, Any], field: str
) -> None:
    code = await held_code(client, admin, user)
    resp = await client.patch(f"{API}/books/{code['book_id']}", json=body, headers=admin.headers)
    _refused(resp, field)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"sold": 5}, "sold"),
        ({"sold_out_at": "2026-01-01T00:00:00Z"}, "sold_out_at"),
        ({"status": "sold_out"}, "status"),
        ({"notified_at": "2026-01-01T00:00:00Z"}, "notified_at"),
        ({"cancelled_at": "2026-01-01T00:00:00Z"}, "cancelled_at"),
        ({"units_left": 0}, "units_left"),
    ],
)
async def test_promo_bodies_refuse_sales_fields(
    client: httpx.AsyncClient,
    conn: AsyncConnection,
    admin: ApiUser,
    body: dict[str, Any],
    field: str,
) -> None:
    promo = await create_promo(client, admin, quantity=3)
    created = await client.post(
        f"{API}/promos",
        json={
            "product_id": promo["product_id"],
            "title": "t",
            "promo_price_cents": 1,
            **window(),
            **body,
        },
        headers=admin.headers,
    )
    _refused(created, field)
    patched = await client.patch(f"{API}/promos/{promo['id']}", json=body, headers=admin.headers)
    _refused(patched, field)
    row = (
        await conn.execute(
            text(
                "SELECT cancelled_at, notified_at,"
                " (SELECT count(*) FROM promo_sales WHERE promo_id = :id)"
                " FROM promos WHERE id = :id"
            ),
            {"id": promo["id"]},
        )
    ).one()
    assert tuple(row) == (None, None, 0)
    shown = (await client.get(f"{API}/promos/{promo['id']}", headers=admin.headers)).json()
    assert (shown["status"], shown["sold_out_at"]) == ("running", None)


async def test_reserve_ignores_any_body(
    client: httpx.AsyncClient, conn: AsyncConnection, admin: ApiUser, make_user: MakeUser
) -> None:
    """Reserving takes no body: a forged `status` or `user_id` has no effect."""
    owner, victim = await make_user(), await make_user()
    held = await held_reservation(client, admin, owner, quantity=3)
    again = await client.post(
        f"{API}/promos/{held['promo_id']}/reserve",
        json={
            "status": "purchased",
            "user_id": str(victim.id),
            "expires_at": "2999-01-01T00:00:00Z",
        },
        headers=owner.headers,
    )
    assert again.status_code in (200, 422), again.text
    rows = (
        await conn.execute(
            text("SELECT user_id, status FROM reservations WHERE promo_id = :p"),
            {"p": held["promo_id"]},
        )
    ).all()
    assert [(r.user_id, r.status) for r in rows] == [(owner.id, "held")]


def _walk_keys(value: object) -> set[str]:
    if isinstance(value, dict):
        return set(value) | {k for v in value.values() for k in _walk_keys(v)}
    if isinstance(value, list):
        return {k for v in value for k in _walk_keys(v)}
    return set()


async def test_password_hashes_never_leave_the_service(
    app: FastAPI, client: httpx.AsyncClient, admin: ApiUser
) -> None:
    email = f"hash-{uuid.uuid4().hex[:8]}@example.com"
    created = await client.post(
        f"{API}/auth/register", json={"email": email, "password": "correct horse"}
    )
    assert created.status_code == 201, created.text
    user_id = created.json()["id"]
    token = await client.post(
        f"{API}/auth/token", data={"username": email, "password": "correct horse"}
    )
    assert token.status_code == 200, token.text
    mine = {"Authorization": f"Bearer {token.json()['access_token']}"}

    responses = [
        created,
        token,
        await client.get(f"{API}/auth/me", headers=mine),
        await client.put(f"{API}/me/profile", json={"tags": ["a"]}, headers=mine),
        await client.get(f"{API}/users/{user_id}", headers=admin.headers),
        await client.get(f"{API}/users?limit=500", headers=admin.headers),
        await client.patch(f"{API}/users/{user_id}", json={"role": "user"}, headers=admin.headers),
    ]
    for resp in responses:
        assert resp.status_code in (200, 201), resp.text
        assert "password" not in " ".join(_walk_keys(resp.json())), resp.text
        assert "$argon2" not in resp.text
    schema_keys = _walk_keys(app.openapi()["components"]["schemas"])
    assert not {k for k in schema_keys if "hash" in k.lower()}
