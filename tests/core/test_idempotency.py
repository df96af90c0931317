from __future__ import annotations

import asyncio
import uuid

import httpx
from sqlalchemy import text

from tests.conftest import MakeUser
from tests.helpers import ApiUser, assert_problem


async def test_same_key_same_body_replays_without_second_effect(
    client: httpx.AsyncClient, admin: ApiUser
) -> None:
    headers = {**admin.headers, "Idempotency-Key": "seg-1"}
    body = {"name": "once", "kind": "static"}
    first = await client.post("/api/v1/segments", json=body, headers=headers)
    second = await client.post("/api/v1/segments", json=body, headers=headers)
    assert first.status_code == second.status_code == 201
    assert first.json() == second.json()
    assert second.headers["idempotent-replayed"] == "true"
    listed = (await client.get("/api/v1/segments?limit=500", headers=admin.headers)).json()
    assert [s["name"] for s in listed["items"]].count("once") == 1


async def test_same_key_different_body_is_422(client: httpx.AsyncClient, admin: ApiUser) -> None:
    headers = {**admin.headers, "Idempotency-Key": "seg-2"}
    await client.post("/api/v1/segments", json={"name": "a", "kind": "static"}, headers=headers)
    again = await client.post(
        "/api/v1/segments", json={"name": "b", "kind": "static"}, headers=headers
    )
    assert_problem(again, 422, "idempotency-key-reused")


async def test_keys_are_scoped_per_user(
    client: httpx.AsyncClient, admin: ApiUser, make_user: MakeUser
) -> None:
    from app.core.security import Role

    other = await make_user(Role.admin)
    body = {"name": "scoped", "kind": "static"}
    a = await client.post(
        "/api/v1/segments", json=body, headers={**admin.headers, "Idempotency-Key": "k"}
    )
    b = await client.post(
        "/api/v1/segments", json=body, headers={**other.headers, "Idempotency-Key": "k"}
    )
    assert a.status_code == b.status_code == 201
    assert a.json()["id"] != b.json()["id"]


async def test_concurrent_same_key_runs_the_effect_once(
    live_client: httpx.AsyncClient, make_live_user: MakeUser, app: object
) -> None:
    from app.core.security import Role

    admin = await make_live_user(Role.admin)
    name = f"race-{uuid.uuid4().hex[:8]}"
    headers = {**admin.headers, "Idempotency-Key": name}
    responses = await asyncio.gather(
        *[
            live_client.post(
                "/api/v1/segments", json={"name": name, "kind": "static"}, headers=headers
            )
            for _ in range(10)
        ]
    )
    statuses = sorted(r.status_code for r in responses)
    assert set(statuses) <= {201, 409}, statuses
    assert 201 in statuses
    for r in responses:
        if r.status_code == 409:
            assert_problem(r, 409, "idempotency-key-in-use")
            assert r.headers["retry-after"]
    ids = {r.json()["id"] for r in responses if r.status_code == 201}
    assert len(ids) == 1
    async with app.state.db.engine.connect() as conn:  # type: ignore[attr-defined]
        count = (
            await conn.execute(text("SELECT count(*) FROM segments WHERE name = :n"), {"n": name})
        ).scalar_one()
    assert count == 1


async def test_invalid_key_is_422(client: httpx.AsyncClient, admin: ApiUser) -> None:
    r = await client.post(
        "/api/v1/segments",
        json={"name": "a", "kind": "static"},
        headers={**admin.headers, "Idempotency-Key": "x" * 300},
    )
    assert_problem(r, 422, "validation-error")
