"""Sessions that scale: passwords hashed with OWASP's argon2id minimum and old hashes
replaced at login, rotating refresh tokens whose reuse revokes the family, logout, and
failed logins throttled per account and per client address."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
from pwdlib.hashers.argon2 import Argon2Hasher
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from app.core.lockout import Lockouts
from tests.helpers import ApiUser, assert_problem

API = "/api/v1"
PASSWORD = "correct horse battery"
OWASP = "$argon2id$v=19$m=19456,t=2,p=1$"


def _email() -> str:
    return f"s-{uuid.uuid4().hex[:12]}@example.com"


async def _register(client: httpx.AsyncClient, email: str) -> None:
    resp = await client.post(f"{API}/auth/register", json={"email": email, "password": PASSWORD})
    assert resp.status_code == 201, resp.text


async def _login(
    client: httpx.AsyncClient, email: str, password: str = PASSWORD, ip: str | None = None
) -> httpx.Response:
    headers = {"X-Forwarded-For": ip} if ip else {}
    return await client.post(
        f"{API}/auth/token", data={"username": email, "password": password}, headers=headers
    )


async def _stored_hash(conn: AsyncConnection, email: str) -> str:
    result = await conn.execute(
        text("SELECT password_hash FROM users WHERE email = :e"), {"e": email}
    )
    return str(result.scalar_one())


async def _me(client: httpx.AsyncClient, access_token: str) -> httpx.Response:
    return await client.get(f"{API}/auth/me", headers={"Authorization": f"Bearer {access_token}"})


async def _refresh(client: httpx.AsyncClient, refresh_token: str) -> httpx.Response:
    return await client.post(f"{API}/auth/refresh", json={"refresh_token": refresh_token})


async def test_passwords_are_hashed_with_owasps_argon2id_minimum(
    client: httpx.AsyncClient, conn: AsyncConnection
) -> None:
    email = _email()
    await _register(client, email)
    assert (await _stored_hash(conn, email)).startswith(OWASP)


async def test_an_old_hash_is_replaced_at_the_next_login(
    client: httpx.AsyncClient, conn: AsyncConnection
) -> None:
    email = _email()
    old = Argon2Hasher().hash(PASSWORD)  # pwdlib's recommended 64 MiB, t=3, p=4
    assert not old.startswith(OWASP)
    await conn.execute(
        text("INSERT INTO users (email, password_hash) VALUES (:e, :h)"), {"e": email, "h": old}
    )
    assert_problem(await _login(client, email, "wrong password"), 401, "unauthenticated")
    assert await _stored_hash(conn, email) == old  # a failed login changes nothing
    resp = await _login(client, email)
    assert resp.status_code == 200, resp.text
    new = await _stored_hash(conn, email)
    assert new.startswith(OWASP) and new != old
    assert (await _login(client, email)).status_code == 200  # the new hash verifies


async def test_refresh_rotates_and_a_reused_token_revokes_the_family(
    client: httpx.AsyncClient,
) -> None:
    email = _email()
    await _register(client, email)
    first: dict[str, Any] = (await _login(client, email)).json()
    assert first["refresh_token"] and first["token_type"] == "bearer"

    resp = await _refresh(client, first["refresh_token"])
    assert resp.status_code == 200, resp.text
    second = resp.json()
    assert second["refresh_token"] != first["refresh_token"]
    assert second["expires_in"] == first["expires_in"]
    assert (await _me(client, second["access_token"])).json()["email"] == email
    resp = await _refresh(client, second["refresh_token"])
    assert resp.status_code == 200, resp.text
    third = resp.json()

    # The first token again: someone else holds a copy. Every token of the login ends.
    assert_problem(await _refresh(client, first["refresh_token"]), 401, "unauthenticated")
    assert_problem(await _refresh(client, third["refresh_token"]), 401, "unauthenticated")
    # Another login of the same account is a family of its own and is untouched.
    other = (await _login(client, email)).json()
    assert (await _refresh(client, other["refresh_token"])).status_code == 200


async def test_logout_revokes_the_login(client: httpx.AsyncClient) -> None:
    email = _email()
    await _register(client, email)
    tokens = (await _login(client, email)).json()
    rotated = (await _refresh(client, tokens["refresh_token"])).json()
    resp = await client.post(f"{API}/auth/logout", json={"refresh_token": rotated["refresh_token"]})
    assert resp.status_code == 204, resp.text
    assert_problem(await _refresh(client, rotated["refresh_token"]), 401, "unauthenticated")
    # Logging out with a token that is not ours is harmless.
    resp = await client.post(f"{API}/auth/logout", json={"refresh_token": "nope"})
    assert resp.status_code == 204


async def test_bad_refresh_tokens_are_401_or_422(client: httpx.AsyncClient) -> None:
    email = _email()
    await _register(client, email)
    real = (await _login(client, email)).json()["refresh_token"]
    token_id = real.split(".")[0]
    for bad in ["nope", f"{token_id}.wrong-secret", f"{uuid.uuid4()}.x"]:
        assert_problem(await _refresh(client, bad), 401, "unauthenticated")
    # A wrong secret for a real id does not spend the real token.
    assert (await _refresh(client, real)).status_code == 200
    resp = await client.post(f"{API}/auth/refresh", json={"refresh_token": ""})
    assert_problem(resp, 422, "validation-error")
    resp = await client.post(f"{API}/auth/refresh", json={})
    assert_problem(resp, 422, "validation-error")


async def test_refresh_carries_the_current_role(
    client: httpx.AsyncClient, admin: ApiUser, conn: AsyncConnection
) -> None:
    email = _email()
    await _register(client, email)
    tokens = (await _login(client, email)).json()
    user_id = (await _me(client, tokens["access_token"])).json()["id"]
    resp = await client.patch(
        f"{API}/users/{user_id}", json={"role": "admin"}, headers=admin.headers
    )
    assert resp.status_code == 200, resp.text
    fresh = (await _refresh(client, tokens["refresh_token"])).json()
    resp = await client.get(
        f"{API}/users", headers={"Authorization": f"Bearer {fresh['access_token']}"}
    )
    assert resp.status_code == 200, resp.text


async def test_failed_logins_are_throttled_per_account_and_address(
    client: httpx.AsyncClient, admin: ApiUser, lockouts: Lockouts
) -> None:
    victim, bystander = _email(), _email()
    await _register(client, victim)
    await _register(client, bystander)
    statuses = []
    for i in range(11):
        # The attacker walks through addresses: the account still locks.
        resp = await _login(client, victim, f"guess-{i:04d}", ip=f"203.0.113.{i + 1}")
        statuses.append(resp.status_code)
    assert statuses == [401] * 10 + [429], statuses
    assert_problem(resp, 429, "too-many-failures")
    assert int(resp.headers["Retry-After"]) > 500
    # Locked means locked, even with the right password.
    assert_problem(await _login(client, victim, ip="198.51.100.1"), 429, "too-many-failures")
    # Another account from another address logs in.
    assert (await _login(client, bystander, ip="198.51.100.2")).status_code == 200

    keys = {
        i["key"]
        for i in (await client.get(f"{API}/lockouts", headers=admin.headers)).json()["items"]
    }
    assert f"account:{victim}" in keys
    resp = await client.delete(f"{API}/lockouts/account:{victim}", headers=admin.headers)
    assert resp.status_code == 204, resp.text
    assert (await _login(client, victim, ip="198.51.100.1")).status_code == 200


async def test_one_address_guessing_many_accounts_is_stopped(
    client: httpx.AsyncClient, lockouts: Lockouts
) -> None:
    statuses = [
        (await _login(client, _email(), "whatever-123", ip="203.0.113.77")).status_code
        for _ in range(11)
    ]
    assert statuses == [401] * 10 + [429], statuses
    honest = _email()
    await _register(client, honest)
    assert (await _login(client, honest, ip="198.51.100.9")).status_code == 200
    assert_problem(await _login(client, honest, ip="203.0.113.77"), 429, "too-many-failures")
