from __future__ import annotations

import time
import uuid

import httpx
import jwt
import pytest

from tests.helpers import ApiUser, assert_problem


def _email() -> str:
    return f"{uuid.uuid4().hex[:10]}@example.com"


async def _register(
    client: httpx.AsyncClient, email: str, password: str = "password-1"
) -> httpx.Response:
    return await client.post("/api/v1/auth/register", json={"email": email, "password": password})


async def _token(
    client: httpx.AsyncClient, email: str, password: str = "password-1"
) -> httpx.Response:
    return await client.post("/api/v1/auth/token", data={"username": email, "password": password})


async def test_register_token_me(client: httpx.AsyncClient) -> None:
    email = _email()
    created = await _register(client, email)
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["email"] == email and body["role"] == "user"
    assert set(body) == {"id", "email", "role", "created_at"}
    assert created.headers["location"] == f"/api/v1/users/{body['id']}"
    token = await _token(client, email)
    assert token.status_code == 200
    assert token.json()["token_type"] == "bearer"
    assert token.json()["expires_in"] == 3600
    me = await client.get(
        "/api/v1/auth/me", headers={"Authorization": f"Bearer {token.json()['access_token']}"}
    )
    assert me.status_code == 200
    assert me.json()["id"] == body["id"]


async def test_register_twice_is_email_taken(client: httpx.AsyncClient) -> None:
    email = _email()
    await _register(client, email)
    assert_problem(await _register(client, email.upper()), 409, "email-taken")


async def test_register_short_password_is_422(client: httpx.AsyncClient) -> None:
    body = assert_problem(await _register(client, _email(), "short"), 422, "validation-error")
    assert body["errors"][0]["loc"] == ["body", "password"]


async def test_wrong_password_is_401(client: httpx.AsyncClient) -> None:
    email = _email()
    await _register(client, email)
    response = await _token(client, email, "not-the-password")
    assert_problem(response, 401, "unauthenticated")
    assert response.headers["www-authenticate"] == "Bearer"
    assert_problem(await _token(client, _email()), 401, "unauthenticated")


async def test_user_token_on_admin_route_is_403(client: httpx.AsyncClient, user: ApiUser) -> None:
    assert_problem(await client.get("/api/v1/users", headers=user.headers), 403, "forbidden")


async def test_admin_lists_and_changes_roles(
    client: httpx.AsyncClient, admin: ApiUser, user: ApiUser
) -> None:
    seen: set[str] = set()
    params: dict[str, str | int] = {"limit": 500}
    while True:  # other tests commit users too: walk every page
        listed = await client.get("/api/v1/users", params=params, headers=admin.headers)
        assert listed.status_code == 200
        seen |= {u["id"] for u in listed.json()["items"]}
        if listed.json()["next_cursor"] is None:
            break
        params["cursor"] = listed.json()["next_cursor"]
    assert str(user.id) in seen
    got = await client.get(f"/api/v1/users/{user.id}", headers=admin.headers)
    assert got.json()["role"] == "user"
    patched = await client.patch(
        f"/api/v1/users/{user.id}", json={"role": "admin"}, headers=admin.headers
    )
    assert patched.status_code == 200 and patched.json()["role"] == "admin"
    assert_problem(
        await client.get(f"/api/v1/users/{uuid.uuid4()}", headers=admin.headers), 404, "not-found"
    )


async def test_users_pagination_walks_every_user(
    client: httpx.AsyncClient, admin: ApiUser, make_user: object
) -> None:
    for _ in range(5):
        await make_user()  # type: ignore[operator]
    seen: list[str] = []
    cursor = None
    while True:
        url = "/api/v1/users?limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = (await client.get(url, headers=admin.headers)).json()
        seen += [u["id"] for u in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) >= 6
    assert_problem(
        await client.get("/api/v1/users?limit=0", headers=admin.headers), 422, "validation-error"
    )
    assert_problem(
        await client.get("/api/v1/users?limit=501", headers=admin.headers), 422, "validation-error"
    )
    assert_problem(
        await client.get("/api/v1/users?cursor=%%%", headers=admin.headers), 422, "validation-error"
    )


async def test_users_by_email_finds_one_account_in_any_case(
    client: httpx.AsyncClient, admin: ApiUser, make_user: object, user: ApiUser
) -> None:
    wanted: ApiUser = await make_user()  # type: ignore[operator]
    await make_user()  # type: ignore[operator]
    url = "/api/v1/users"
    found = await client.get(url, params={"email": wanted.email.upper()}, headers=admin.headers)
    assert found.status_code == 200, found.text
    assert [u["id"] for u in found.json()["items"]] == [str(wanted.id)]
    assert found.json()["next_cursor"] is None
    nobody = await client.get(url, params={"email": _email()}, headers=admin.headers)
    assert nobody.json() == {"items": [], "next_cursor": None}
    for bad in ("not-an-email", "a\x00b@example.com", "x" * 321 + "@example.com"):
        response = await client.get(url, params={"email": bad}, headers=admin.headers)
        assert_problem(response, 422, "validation-error")
    refused = await client.get(url, params={"email": wanted.email}, headers=user.headers)
    assert_problem(refused, 403, "forbidden")


SECRET = "test-secret-" + "x" * 32


def _forge(
    claims: dict[str, object],
    key: str = SECRET,
    alg: str = "HS256",
    headers: dict[str, object] | None = None,
) -> str:
    return jwt.encode(claims, key, algorithm=alg, headers=headers)


@pytest.mark.parametrize(
    "token",
    [
        pytest.param("not-a-jwt", id="garbage"),
        pytest.param(
            _forge(
                {"sub": str(uuid.uuid4()), "role": "admin", "iat": 0, "exp": int(time.time()) + 60},
                key="wrong-secret-" + "y" * 32,
            ),
            id="wrong-signature",
        ),
        pytest.param(
            _forge({"sub": str(uuid.uuid4()), "role": "user", "iat": 0, "exp": 1}), id="expired"
        ),
        pytest.param(
            jwt.api_jws.PyJWS().encode(
                b'{"sub": "00000000-0000-0000-0000-000000000000", "role": "admin",'
                b' "exp": 9999999999, "iat": 0}',
                key="",
                algorithm="none",
            ),
            id="alg-none",
        ),
        pytest.param(
            _forge(
                {"sub": str(uuid.uuid4()), "role": "admin", "iat": 0, "exp": int(time.time()) + 60},
                headers={"jku": "http://127.0.0.1:1/k"},
            ),
            id="jku-header",
        ),
        pytest.param(
            _forge({"sub": "not-a-uuid", "role": "admin", "iat": 0, "exp": int(time.time()) + 60}),
            id="bad-subject",
        ),
        pytest.param(
            _forge(
                {"sub": str(uuid.uuid4()), "role": "root", "iat": 0, "exp": int(time.time()) + 60}
            ),
            id="bad-role",
        ),
        pytest.param(
            _forge({"sub": str(uuid.uuid4()), "role": "admin", "exp": int(time.time()) + 60}),
            id="no-iat",
        ),
    ],
)
async def test_bad_tokens_are_401(client: httpx.AsyncClient, token: str) -> None:
    response = await client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {token}"})
    assert_problem(response, 401, "unauthenticated")
    assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize(
    ("exp_offset", "iat_offset", "status"),
    [
        pytest.param(-10, -3600, 200, id="expired-within-leeway"),
        pytest.param(-120, -3600, 401, id="expired-beyond-leeway"),
        pytest.param(3600, 10, 200, id="issued-ahead-within-leeway"),
        pytest.param(3600, 120, 401, id="issued-ahead-beyond-leeway"),
    ],
)
async def test_token_times_allow_30_seconds_of_clock_difference(
    client: httpx.AsyncClient, user: ApiUser, exp_offset: int, iat_offset: int, status: int
) -> None:
    now = int(time.time())
    token = _forge(
        {"sub": str(user.id), "role": "user", "iat": now + iat_offset, "exp": now + exp_offset}
    )
    response = await client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == status, response.text


async def test_missing_token_is_401(client: httpx.AsyncClient) -> None:
    assert_problem(await client.get("/api/v1/auth/me"), 401, "unauthenticated")


async def test_malformed_json_is_400(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/api/v1/auth/register", content=b"{nope", headers={"content-type": "application/json"}
    )
    assert_problem(response, 400, "bad-request")


async def test_nul_byte_in_password_is_422(client: httpx.AsyncClient) -> None:
    assert_problem(await _register(client, _email(), "abc\x00defghij"), 422, "validation-error")


async def test_location_and_profile(client: httpx.AsyncClient, user: ApiUser) -> None:
    loc = await client.put(
        "/api/v1/me/location", json={"lat": 40.4, "lng": -3.7}, headers=user.headers
    )
    assert loc.status_code == 200
    assert loc.json()["lat"] == 40.4 and loc.json()["location_updated_at"]
    assert_problem(
        await client.put("/api/v1/me/location", json={"lat": 91, "lng": 0}, headers=user.headers),
        422,
        "validation-error",
    )
    assert_problem(
        await client.put(
            "/api/v1/me/location",
            content=b'{"lat": NaN, "lng": 0}',
            headers={**user.headers, "content-type": "application/json"},
        ),
        422,
        "validation-error",
    )
    prof = await client.put(
        "/api/v1/me/profile",
        json={"birth_date": "1990-05-17", "tags": ["vip", "vip", "b"], "timezone": "Europe/Madrid"},
        headers=user.headers,
    )
    assert prof.status_code == 200
    assert prof.json()["tags"] == ["b", "vip"] and prof.json()["timezone"] == "Europe/Madrid"
    partial = await client.put("/api/v1/me/profile", json={"tags": []}, headers=user.headers)
    assert partial.json()["timezone"] == "Europe/Madrid" and partial.json()["tags"] == []
    assert_problem(
        await client.put(
            "/api/v1/me/profile", json={"timezone": "Mars/Olympus"}, headers=user.headers
        ),
        422,
        "validation-error",
    )


async def test_session_cookie_needs_csrf_on_unsafe_methods(
    client: httpx.AsyncClient, user: ApiUser
) -> None:
    client.cookies.set("cf_session", user.token)
    client.cookies.set("cf_csrf", "double-submit-value")
    assert (await client.get("/api/v1/auth/me")).status_code == 200
    body = {"lat": 1.0, "lng": 2.0}
    assert_problem(await client.put("/api/v1/me/location", json=body), 403, "forbidden")
    wrong = {"X-CSRF-Token": "other"}
    assert_problem(
        await client.put("/api/v1/me/location", json=body, headers=wrong), 403, "forbidden"
    )
    ok = await client.put(
        "/api/v1/me/location", json=body, headers={"X-CSRF-Token": "double-submit-value"}
    )
    assert ok.status_code == 200
    client.cookies.clear()


async def test_subnormal_coordinates_are_rounded_not_500(
    client: httpx.AsyncClient, user: ApiUser
) -> None:
    response = await client.put(
        "/api/v1/me/location", json={"lat": 5e-324, "lng": -5e-324}, headers=user.headers
    )
    assert response.status_code == 200, response.text
    assert response.json()["lat"] == 0 and response.json()["lng"] == 0
