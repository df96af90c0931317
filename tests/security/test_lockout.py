"""Guessing lockout: failed lookups are counted per user and per client address in
PostgreSQL; past the threshold the caller gets 429 `too-many-failures` with `Retry-After`
until the window passes, while everyone else is unaffected; successes never count; the
client address comes from `X-Forwarded-For` only through a trusted proxy; admins list and
clear lockouts."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection
from starlette.requests import Request

from app.core.clientip import client_address, parse_networks
from app.core.lockout import Lockouts, TooManyFailures, purge_expired
from app.core.security import Role
from tests.books.flows import book_with_codes
from tests.books.helpers import API
from tests.conftest import MakeUser
from tests.helpers import ApiUser, assert_problem, wait_for

ATTACKER_IP = "203.0.113.9"
HONEST_IP = "198.51.100.7"


def _from(who: ApiUser, ip: str) -> dict[str, str]:
    # A client sends its own X-Forwarded-For too; the trusted proxy appends the peer.
    return {**who.headers, "X-Forwarded-For": f"10.9.9.9, {ip}"}


async def _row(conn: AsyncConnection, key: str) -> Any:
    result = await conn.execute(text("SELECT failures FROM lockouts WHERE key = :k"), {"k": key})
    return result.scalar_one_or_none()


async def test_a_scripted_guessing_attack_is_stopped_at_the_threshold(
    client: httpx.AsyncClient,
    admin: ApiUser,
    make_user: MakeUser,
    lockouts: Lockouts,
    conn: AsyncConnection,
) -> None:
    _, codes = await book_with_codes(client, admin, n=4, max_codes_per_user=None)
    honest, attacker, neighbour = [await make_user(Role.user) for _ in range(3)]
    for who, code in [(honest, codes[0]), (attacker, codes[1])]:
        resp = await client.post(f"{API}/codes/{code}/assign", headers=_from(who, HONEST_IP))
        assert resp.status_code == 201, resp.text

    answers = []
    actions = ["lock", "redeem", "validate", "assign", "unlock"]
    for i in range(14):
        action = actions[i % len(actions)]
        # A made-up code, or now and then another user's real code (assigning that one
        # would be a plain 409 `code-unavailable`: it exists).
        another = i % 3 == 0 and action != "assign"
        guess = codes[0] if another else f"GUESS-{uuid.uuid4().hex[:8].upper()}"
        resp = await client.post(
            f"{API}/codes/{guess}/{action}", headers=_from(attacker, ATTACKER_IP)
        )
        answers.append(resp.status_code)
        print(f"attempt {i + 1:2}: {action:8} {guess:16} -> {resp.status_code}")
    assert answers[:10] == [404] * 10, answers
    assert answers[10:] == [429] * 4, answers
    refused = assert_problem(resp, 429, "too-many-failures")
    assert 590 <= int(resp.headers["Retry-After"]) <= 600, resp.headers
    print(f"caught after 10 failures: {refused['detail']}")

    # Locked means locked: even the attacker's own code is refused now, from any address
    # (the user is locked) and for anyone at the attacker's address (so is the address).
    resp = await client.post(f"{API}/codes/{codes[1]}/lock", headers=_from(attacker, HONEST_IP))
    assert_problem(resp, 429, "too-many-failures")
    resp = await client.post(
        f"{API}/codes/{codes[2]}/assign", headers=_from(neighbour, ATTACKER_IP)
    )
    assert_problem(resp, 429, "too-many-failures")
    # The honest user on another address is untouched.
    resp = await client.post(f"{API}/codes/{codes[0]}/lock", headers=_from(honest, HONEST_IP))
    assert resp.status_code == 200, resp.text
    lock_id = resp.json()["lock_id"]
    resp = await client.post(
        f"{API}/codes/{codes[0]}/redeem",
        json={"lock_id": lock_id},
        headers=_from(honest, HONEST_IP),
    )
    assert resp.status_code == 200, resp.text
    print("honest user on another address: lock 200, redeem 200")

    # The admin sees both keys and clears them; the attacker's own code works again.
    resp = await client.get(f"{API}/lockouts", headers=admin.headers)
    assert resp.status_code == 200, resp.text
    locked = {item["key"]: item for item in resp.json()["items"]}
    assert {f"user:{attacker.id}", f"ip:{ATTACKER_IP}"} <= set(locked)
    assert locked[f"ip:{ATTACKER_IP}"]["failures"] == 11
    assert f"user:{honest.id}" not in locked and f"ip:{HONEST_IP}" not in locked
    for key in (f"user:{attacker.id}", f"ip:{ATTACKER_IP}"):
        resp = await client.delete(f"{API}/lockouts/{key}", headers=admin.headers)
        assert resp.status_code == 204, resp.text
        resp = await client.delete(f"{API}/lockouts/{key}", headers=admin.headers)
        assert_problem(resp, 404, "not-found")
    resp = await client.post(f"{API}/codes/{codes[1]}/lock", headers=_from(attacker, ATTACKER_IP))
    assert resp.status_code == 200, resp.text


async def test_successes_never_count(
    client: httpx.AsyncClient,
    admin: ApiUser,
    user: ApiUser,
    lockouts: Lockouts,
    conn: AsyncConnection,
) -> None:
    _, codes = await book_with_codes(client, admin, n=1)
    resp = await client.post(f"{API}/codes/{codes[0]}/assign", headers=_from(user, HONEST_IP))
    assert resp.status_code == 201, resp.text
    for _ in range(25):
        resp = await client.post(f"{API}/codes/{codes[0]}/validate", headers=_from(user, HONEST_IP))
        assert resp.status_code == 200, resp.text
    assert await _row(conn, f"user:{user.id}") is None
    assert await _row(conn, f"ip:{HONEST_IP}") is None
    # A 409 is not a failed lookup either: the code exists and is the caller's.
    resp = await client.post(f"{API}/codes/{codes[0]}/unlock", headers=_from(user, HONEST_IP))
    assert resp.status_code == 200, resp.text
    resp = await client.post(f"{API}/codes/{codes[0]}/assign", headers=_from(admin, HONEST_IP))
    assert resp.status_code == 409, resp.text
    assert await _row(conn, f"ip:{HONEST_IP}") is None


async def test_other_instances_see_the_lock_through_postgresql(
    client: httpx.AsyncClient, user: ApiUser, lockouts: Lockouts, conn: AsyncConnection
) -> None:
    for _ in range(11):
        resp = await client.post(
            f"{API}/codes/NOPE-{uuid.uuid4().hex[:6]}/lock", headers=_from(user, ATTACKER_IP)
        )
    assert_problem(resp, 429, "too-many-failures")
    driver = (await conn.get_raw_connection()).driver_connection

    @asynccontextmanager
    async def lend() -> AsyncIterator[Any]:
        yield driver

    elsewhere = Lockouts(enabled=True, max_failures=10, window_seconds=600, refresh_seconds=2)
    with pytest.raises(TooManyFailures) as caught:
        await elsewhere.refuse_locked([f"user:{user.id}"], lend)
    assert 590 <= int(caught.value.headers["Retry-After"]) <= 600
    await elsewhere.refuse_locked([f"user:{uuid.uuid4()}", "ip:192.0.2.1"], lend)


async def test_the_lock_lasts_until_the_window_passes(
    client: httpx.AsyncClient, user: ApiUser, lockouts: Lockouts
) -> None:
    lockouts.max_failures, lockouts.window_seconds = 2, 2
    statuses = []
    for _ in range(3):
        resp = await client.post(
            f"{API}/codes/NOPE-{uuid.uuid4().hex[:6]}/validate", headers=_from(user, ATTACKER_IP)
        )
        statuses.append(resp.status_code)
    assert statuses == [404, 404, 429]
    assert int(resp.headers["Retry-After"]) <= 2

    async def unlocked() -> bool:
        resp = await client.post(f"{API}/codes/NOPE-X/validate", headers=_from(user, HONEST_IP))
        return resp.status_code == 404

    await wait_for(unlocked, timeout=10, what="the lockout window to pass")


def _request(peer: str, forwarded: str | None) -> Request:
    headers = [(b"x-forwarded-for", forwarded.encode())] if forwarded else []
    return Request({"type": "http", "client": (peer, 1234), "headers": headers})


def test_forwarded_for_counts_only_through_trusted_proxies() -> None:
    proxies = parse_networks(["10.0.0.0/8", "::1"])
    # Untrusted peer: its header is ignored, whatever it says.
    assert client_address(_request("198.51.100.7", "1.2.3.4"), proxies) == "198.51.100.7"
    assert client_address(_request("198.51.100.7", "1.2.3.4"), ()) == "198.51.100.7"
    # Trusted peer: the rightmost address that is not a trusted proxy; a client's own
    # X-Forwarded-For entries to the left cannot override it.
    assert client_address(_request("10.0.0.5", "6.6.6.6, 203.0.113.9"), proxies) == "203.0.113.9"
    assert client_address(_request("10.0.0.5", "203.0.113.9, 10.1.1.1"), proxies) == "203.0.113.9"
    assert client_address(_request("::1", "2001:db8::7"), proxies) == "2001:db8::7"
    assert client_address(_request("10.0.0.5", None), proxies) == "10.0.0.5"
    assert client_address(_request("10.0.0.5", "not-an-ip"), proxies) == "10.0.0.5"


async def test_lockouts_are_for_admins(client: httpx.AsyncClient, user: ApiUser) -> None:
    resp = await client.get(f"{API}/lockouts", headers=user.headers)
    assert_problem(resp, 403, "forbidden")
    resp = await client.delete(f"{API}/lockouts/ip:1.2.3.4", headers=user.headers)
    assert_problem(resp, 403, "forbidden")


async def test_the_worker_purges_windows_that_have_passed(conn: AsyncConnection) -> None:
    tag = uuid.uuid4().hex[:8]
    await conn.execute(
        text(
            "INSERT INTO lockouts (key, window_started_at, failures, locked_until)"
            " SELECT 'ip:old-' || :t || g, now() - interval '11 minutes' - g * interval '1 s',"
            " 11, now() - interval '1 minute' FROM generate_series(1, 3) AS g"
            " UNION ALL SELECT 'ip:new-' || :t, now() - interval '9 minutes', 11,"
            " now() + interval '1 minute'"
        ),
        {"t": tag},
    )
    raw = (await conn.get_raw_connection()).driver_connection
    assert await purge_expired(raw, 600, 2) == 2
    assert await purge_expired(raw, 600, 2) == 1
    left = await raw.fetch("SELECT key FROM lockouts WHERE key LIKE $1", f"ip:%{tag}%")
    assert [r["key"] for r in left] == [f"ip:new-{tag}"]
