"""API2:2023 Broken authentication. Forged, expired, `alg: none`, HS/RS confusion, unknown
`kid`, `jku` and wrong audience/issuer tokens are covered in tests/auth; these are the
remaining ways a request could pass as someone it is not."""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx
import jwt
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from app.core.security import Role
from app.core.settings import Settings
from tests.conftest import MakeUser
from tests.helpers import ApiUser, assert_problem
from tests.security.support import API, held_code

ME = f"{API}/auth/me"


async def _deleted_user(conn: AsyncConnection, make_user: MakeUser) -> ApiUser:
    """A user whose valid, unexpired token outlived its account."""
    ghost = await make_user()
    await conn.execute(text("DELETE FROM users WHERE id = :id"), {"id": ghost.id})
    return ghost


async def test_token_of_a_deleted_user_cannot_write(
    client: httpx.AsyncClient, conn: AsyncConnection, admin: ApiUser, make_user: MakeUser
) -> None:
    holder = await make_user()
    code = str((await held_code(client, admin, holder))["code"])
    book_id = str(
        (await client.get(f"{API}/codes/{code}", headers=admin.headers)).json()["book_id"]
    )
    ghost = await _deleted_user(conn, make_user)

    attempts: list[tuple[str, str, dict[str, Any] | None]] = [
        ("GET", ME, None),
        ("PUT", f"{API}/me/location", {"lat": 1.0, "lng": 2.0}),
        ("PUT", f"{API}/me/profile", {"tags": ["vip"]}),
        ("POST", f"{API}/books/{book_id}/assign", {}),
        ("POST", f"{API}/promos/{uuid.uuid4()}/reserve", None),
        ("POST", f"{API}/me/notifications/1/read", None),
    ]
    for method, url, body in attempts:
        resp = await client.request(method, url, json=body, headers=ghost.headers)
        assert resp.status_code in (401, 403, 404), (method, url, resp.status_code, resp.text)
        assert resp.headers["content-type"].startswith("application/problem+json")

    left = (
        await conn.execute(
            text("SELECT count(*) FROM codes WHERE book_id = :b AND user_id = :u"),
            {"b": book_id, "u": ghost.id},
        )
    ).scalar_one()
    assert left == 0
    users = (
        await conn.execute(text("SELECT count(*) FROM users WHERE id = :id"), {"id": ghost.id})
    ).scalar_one()
    assert users == 0


@pytest.mark.parametrize(
    "authorization",
    [
        pytest.param("Bearer ", id="bearer-empty"),
        pytest.param("Bearer", id="bearer-alone"),
        pytest.param("Bearer  ", id="bearer-spaces"),
        pytest.param("Token {token}", id="other-scheme"),
        pytest.param("Basic {token}", id="basic-scheme"),
        pytest.param("{token}", id="no-scheme"),
        pytest.param("Bearer {token}x", id="tampered-signature"),
        pytest.param("Bearer {token}.{token}", id="extra-segments"),
    ],
)
async def test_malformed_authorization_is_401(
    client: httpx.AsyncClient, user: ApiUser, authorization: str
) -> None:
    header = authorization.format(token=user.token)
    resp = await client.get(ME, headers={"Authorization": header})
    assert_problem(resp, 401, "unauthenticated")
    assert resp.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "Bearer"])
async def test_scheme_is_case_insensitive(
    client: httpx.AsyncClient, user: ApiUser, scheme: str
) -> None:
    resp = await client.get(ME, headers={"Authorization": f"{scheme} {user.token}"})
    assert resp.status_code == 200, resp.text
    assert resp.json()["id"] == str(user.id)


@pytest.mark.parametrize("name", ["access_token", "token", "jwt", "authorization", "bearer"])
async def test_token_in_query_string_is_ignored(
    client: httpx.AsyncClient, user: ApiUser, name: str
) -> None:
    resp = await client.get(ME, params={name: user.token})
    assert_problem(resp, 401, "unauthenticated")
    # and it is not echoed anywhere in the refusal
    assert user.token not in resp.text


async def test_token_in_form_body_is_ignored(client: httpx.AsyncClient, user: ApiUser) -> None:
    resp = await client.put(
        f"{API}/me/location",
        data={"access_token": user.token, "lat": "1", "lng": "2"},
    )
    assert_problem(resp, 401, "unauthenticated")


async def test_role_claim_is_bound_to_the_signature(
    client: httpx.AsyncClient, user: ApiUser
) -> None:
    """Flipping `role` in the payload of a genuine token breaks its signature."""
    header, _, signature = user.token.split(".")
    claims = jwt.decode(user.token, options={"verify_signature": False})
    claims["role"] = Role.admin.value
    forged_payload = jwt.utils.base64url_encode(
        jwt.api_jwt.PyJWT()._encode_payload(claims)  # type: ignore[attr-defined]
    ).decode()
    forged = f"{header}.{forged_payload}.{signature}"
    resp = await client.get(f"{API}/users", headers={"Authorization": f"Bearer {forged}"})
    assert_problem(resp, 401, "unauthenticated")


@pytest.mark.parametrize(
    "claims",
    [
        pytest.param({"exp": int(time.time()) + 60}, id="no-sub"),
        pytest.param({"sub": "{id}", "iat": int(time.time())}, id="no-exp"),
        pytest.param(
            {"sub": "{id}", "iat": int(time.time()) + 3600, "exp": int(time.time()) + 7200},
            id="issued-in-the-future",
        ),
        pytest.param(
            {
                "sub": "{id}",
                "iat": int(time.time()),
                "exp": int(time.time()) + 60,
                "nbf": int(time.time()) + 3600,
            },
            id="not-yet-valid",
        ),
    ],
)
async def test_incomplete_or_premature_claims_are_401(
    client: httpx.AsyncClient, settings: Settings, user: ApiUser, claims: dict[str, Any]
) -> None:
    body = {
        k: (v.format(id=user.id) if isinstance(v, str) and "{id}" in v else v)
        for k, v in claims.items()
    }
    body.setdefault("role", "user")
    token = jwt.encode(body, settings.jwt_secret or "", algorithm="HS256")
    resp = await client.get(ME, headers={"Authorization": f"Bearer {token}"})
    assert_problem(resp, 401, "unauthenticated")


@pytest.mark.parametrize("header", ["x5u", "jwk", "x5c"])
async def test_tokens_naming_their_own_keys_are_refused(
    client: httpx.AsyncClient, settings: Settings, user: ApiUser, header: str
) -> None:
    now = int(time.time())
    values: dict[str, object] = {
        "x5u": "http://127.0.0.1:1/cert.pem",
        "jwk": {"kty": "oct", "k": "c2VjcmV0"},
        "x5c": ["MIIB"],
    }
    token = jwt.encode(
        {"sub": str(user.id), "role": "admin", "iat": now, "exp": now + 60},
        settings.jwt_secret or "",
        algorithm="HS256",
        headers={header: values[header]},
    )
    resp = await client.get(ME, headers={"Authorization": f"Bearer {token}"})
    assert_problem(resp, 401, "unauthenticated")


async def test_failed_logins_do_not_reveal_whether_the_account_exists(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    email = f"known-{uuid.uuid4().hex[:8]}@example.com"
    created = await client.post(
        f"{API}/auth/register", json={"email": email, "password": "correct horse"}
    )
    assert created.status_code == 201, created.text
    known = await client.post(
        f"{API}/auth/token", data={"username": email, "password": "wrong password"}
    )
    unknown = await client.post(
        f"{API}/auth/token",
        data={"username": f"nobody-{uuid.uuid4().hex[:8]}@example.com", "password": "whatever1"},
    )
    a, b = (
        assert_problem(known, 401, "unauthenticated"),
        assert_problem(unknown, 401, "unauthenticated"),
    )
    assert {k: v for k, v in a.items() if k != "instance"} == {
        k: v for k, v in b.items() if k != "instance"
    }
