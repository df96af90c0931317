"""Regressions found in review: metrics timing, lock-extension slug, replayed Location,
the 413 problem base."""

from __future__ import annotations

import re

import httpx
from fastapi import FastAPI

from app.core.settings import Settings
from app.main import create_app
from tests.books.helpers import fill, make_book, unique_codes
from tests.helpers import ApiUser, assert_problem, started


async def test_latency_histogram_measures_the_request(client: httpx.AsyncClient) -> None:
    for _ in range(3):
        await client.get("/healthz")
    body = (await client.get("/metrics")).text
    total = re.search(
        r'http_request_duration_seconds_sum\{method="GET",route="/healthz"\} (\S+)', body
    )
    count = re.search(
        r'http_request_duration_seconds_count\{method="GET",route="/healthz"\} (\S+)', body
    )
    assert total and count
    assert float(total.group(1)) / float(count.group(1)) < 1.0


async def test_extending_a_lock_on_a_paused_book_is_book_inactive(
    client: httpx.AsyncClient, admin: ApiUser, user: ApiUser
) -> None:
    book = await make_book(client, admin)
    await fill(client, admin, book["id"], unique_codes(1))
    code = (
        await client.post(f"/api/v1/books/{book['id']}/assign", json={}, headers=user.headers)
    ).json()["code"]
    locked = await client.post(f"/api/v1/codes/{code}/lock", json={}, headers=user.headers)
    lock_id = locked.json()["lock_id"]
    await client.patch(
        f"/api/v1/books/{book['id']}", json={"status": "paused"}, headers=admin.headers
    )
    again = await client.post(
        f"/api/v1/codes/{code}/lock", json={"lock_id": lock_id}, headers=user.headers
    )
    assert_problem(again, 409, "book-inactive")
    other = await client.post(f"/api/v1/codes/{code}/lock", json={}, headers=user.headers)
    assert_problem(other, 409, "code-locked")


async def test_replayed_201_carries_its_location(
    client: httpx.AsyncClient, admin: ApiUser, user: ApiUser
) -> None:
    book = await make_book(client, admin)
    await fill(client, admin, book["id"], unique_codes(2))
    headers = {**user.headers, "Idempotency-Key": "assign-once"}
    first = await client.post(f"/api/v1/books/{book['id']}/assign", json={}, headers=headers)
    again = await client.post(f"/api/v1/books/{book['id']}/assign", json={}, headers=headers)
    assert first.status_code == again.status_code == 201
    assert again.headers["idempotent-replayed"] == "true"
    assert again.headers["location"] == first.headers["location"]
    assert again.json() == first.json()


async def test_413_uses_the_configured_problem_base(settings: Settings, app: FastAPI) -> None:
    custom = create_app(settings.model_copy(update={"problem_base": "https://errors.example/p"}))
    async with started(custom) as served:
        transport = httpx.ASGITransport(app=served.asgi, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            response = await c.post(
                "/api/v1/auth/register",
                content=b"{" + b" " * 2_000_000 + b"}",
                headers={"content-type": "application/json"},
            )
    body = assert_problem(response, 413, "payload-too-large")
    assert str(body["type"]).startswith("https://errors.example/p/")


async def test_book_list_refuses_a_cursor_with_a_naive_time(
    client: httpx.AsyncClient, admin: ApiUser
) -> None:
    from app.core.pagination import encode_cursor

    cursor = encode_cursor("2026-01-01T00:00:00", "00000000-0000-0000-0000-000000000000")
    response = await client.get(f"/api/v1/books?cursor={cursor}", headers=admin.headers)
    assert_problem(response, 422, "validation-error")
