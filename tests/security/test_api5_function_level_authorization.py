"""API5:2023 Broken function level authorization: every admin route, found from the app's
own dependency tree and checked against the contract's list, refuses a user token with 403
`forbidden` and a missing token with 401 `unauthenticated`, before doing anything."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from tests.helpers import ApiUser, assert_problem
from tests.security.support import API, Endpoint, admin_endpoints, authenticated_endpoints

# The admin routes of /work/shared/API.md (books, codes rollback, history, users, segments,
# stores, products, promos, dead letters, import jobs; lockouts, audit and erasure of a user).
CONTRACT_ADMIN_ROUTES = {
    "GET /users",
    "GET /users/{user_id}",
    "PATCH /users/{user_id}",
    "POST /books",
    "GET /books",
    "GET /books/{book_id}",
    "PATCH /books/{book_id}",
    "POST /books/{book_id}/codes",
    "POST /books/{book_id}/codes/generate",
    "GET /books/{book_id}/codes",
    "GET /books/{book_id}/codes.csv",
    "POST /books/{book_id}/distribute",
    "POST /books/{book_id}/imports",
    "GET /books/{book_id}/imports",
    "GET /imports/{import_id}",
    "GET /imports/{import_id}/errors.csv",
    "DELETE /imports/{import_id}",
    "POST /books/{book_id}/distribute/preview",  # additions: docs/decisions.md
    "GET /books/{book_id}/report",
    "POST /codes/{code}/rollback",
    "GET /history",
    "POST /segments",
    "GET /segments",
    "GET /segments/{segment_id}",
    "PATCH /segments/{segment_id}",
    "DELETE /segments/{segment_id}",
    "POST /segments/{segment_id}/members",
    "DELETE /segments/{segment_id}/members/{user_id}",
    "GET /segments/{segment_id}/members",
    "POST /stores",
    "GET /stores",
    "GET /stores/{store_id}",
    "PATCH /stores/{store_id}",
    "DELETE /stores/{store_id}",
    "POST /products",
    "GET /products",
    "GET /products/{product_id}",
    "PATCH /products/{product_id}",
    "DELETE /products/{product_id}",
    "POST /promos",
    "GET /promos",
    "GET /promos/{promo_id}",
    "PATCH /promos/{promo_id}",
    "DELETE /promos/{promo_id}",
    "POST /promos/{promo_id}/cancel",
    "GET /promos/{promo_id}/stats",
    "GET /promos/{promo_id}/report",
    "GET /notifications/dead-letters",
    "POST /notifications/dead-letters/{job_id}/retry",
    "GET /lockouts",
    "DELETE /lockouts/{key}",
    "GET /audit",
    "GET /audit/verify",
    "DELETE /users/{user_id}",
}

# A refresh token is its own credential: refresh and logout take no access token.
PUBLIC_ROUTES = {
    "POST /auth/register",
    "POST /auth/token",
    "POST /auth/refresh",
    "POST /auth/logout",
}


def _name(endpoint: Endpoint) -> str:
    return f"{endpoint.method} {endpoint.path.removeprefix(API)}"


def test_admin_routes_match_the_contract(app: FastAPI) -> None:
    guarded = {_name(e) for e in admin_endpoints(app)}
    assert guarded == CONTRACT_ADMIN_ROUTES


def test_every_other_route_needs_a_token(app: FastAPI) -> None:
    from tests.security.support import api_endpoints

    everything = {_name(e) for e in api_endpoints(app)}
    authenticated = {_name(e) for e in authenticated_endpoints(app)}
    assert everything - authenticated == PUBLIC_ROUTES


# Bodies good enough that a missing guard would reach the handler and do something.
_BODIES: dict[str, object] = {
    "PATCH /users/{user_id}": {"role": "admin"},
    "POST /books": {"name": "escalated"},
    "PATCH /books/{book_id}": {"status": "archived"},
    "POST /books/{book_id}/codes/generate": {"count": 1},
    "POST /books/{book_id}/distribute": {"user_ids": ["00000000-0000-0000-0000-000000000001"]},
    "POST /codes/{code}/rollback": {"redemption_id": 1},
    "POST /segments": {"name": "escalated", "kind": "static"},
    "PATCH /segments/{segment_id}": {"name": "escalated"},
    "POST /segments/{segment_id}/members": {"user_ids": ["00000000-0000-0000-0000-000000000001"]},
    "POST /stores": {"name": "escalated", "lat": 1.0, "lng": 1.0},
    "PATCH /stores/{store_id}": {"name": "escalated"},
    "POST /products": {
        "store_id": "00000000-0000-0000-0000-000000000001",
        "name": "escalated",
        "price_cents": 1,
    },
    "PATCH /products/{product_id}": {"name": "escalated"},
    "PATCH /promos/{promo_id}": {"title": "escalated"},
}


async def _call(
    client: httpx.AsyncClient, endpoint: Endpoint, headers: dict[str, str]
) -> httpx.Response:
    name = _name(endpoint)
    if name in ("POST /books/{book_id}/codes", "POST /books/{book_id}/imports"):
        return await client.post(
            endpoint.url(),
            content=b"ESCALATED-1\n",
            headers={**headers, "Content-Type": "text/csv"},
        )
    body = _BODIES.get(name)
    if endpoint.method in ("GET", "DELETE"):
        return await client.request(endpoint.method, endpoint.url(), headers=headers)
    return await client.request(endpoint.method, endpoint.url(), json=body, headers=headers)


@pytest.mark.parametrize("route", sorted(CONTRACT_ADMIN_ROUTES))
async def test_admin_route_refuses_users_and_strangers(
    app: FastAPI,
    client: httpx.AsyncClient,
    conn: AsyncConnection,
    user: ApiUser,
    route: str,
) -> None:
    [endpoint] = [e for e in admin_endpoints(app) if _name(e) == route]
    role_before = (
        await conn.execute(text("SELECT role FROM users WHERE id = :id"), {"id": user.id})
    ).scalar_one()

    as_user = await _call(client, endpoint, user.headers)
    assert_problem(as_user, 403, "forbidden")
    anonymous = await _call(client, endpoint, {})
    assert_problem(anonymous, 401, "unauthenticated")
    assert anonymous.headers["www-authenticate"] == "Bearer"

    role_after = (
        await conn.execute(text("SELECT role FROM users WHERE id = :id"), {"id": user.id})
    ).scalar_one()
    assert role_before == role_after == "user"


async def test_admin_routes_refuse_a_user_even_on_their_own_objects(
    client: httpx.AsyncClient, conn: AsyncConnection, admin: ApiUser, user: ApiUser
) -> None:
    """Owning a code does not open its admin operations (rollback, the book's listing)."""
    from tests.security.support import held_code

    code = await held_code(client, admin, user)
    redeemed = await client.post(
        f"{API}/codes/{code['code']}/redeem", json={}, headers=user.headers
    )
    assert redeemed.status_code == 200, redeemed.text
    rollback = await client.post(
        f"{API}/codes/{code['code']}/rollback",
        json={"redemption_id": redeemed.json()["redemption_id"]},
        headers=user.headers,
    )
    assert_problem(rollback, 403, "forbidden")
    for url in (
        f"{API}/books/{code['book_id']}",
        f"{API}/books/{code['book_id']}/codes",
        f"{API}/books/{code['book_id']}/codes.csv",
        f"{API}/history?user_id={user.id}",
        f"{API}/users/{user.id}",
    ):
        assert_problem(await client.get(url, headers=user.headers), 403, "forbidden")
    redemptions = (
        await conn.execute(
            text("SELECT redemptions FROM codes WHERE code = :c"), {"c": code["code"]}
        )
    ).scalar_one()
    assert redemptions == 1


async def test_method_override_headers_do_not_bypass_the_guard(
    client: httpx.AsyncClient, user: ApiUser
) -> None:
    for header in ("X-HTTP-Method-Override", "X-HTTP-Method", "X-Method-Override"):
        resp = await client.get(f"{API}/auth/me", headers={**user.headers, header: "DELETE"})
        assert resp.status_code == 200
        resp = await client.post(f"{API}/users", headers={**user.headers, header: "GET"})
        assert resp.status_code in (403, 405), resp.text
