"""API4:2023 Unrestricted resource consumption: page sizes, body sizes, nesting, CSV fields
and multipart parts are all bounded, and going over a bound is a 4xx, never a 500."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI

from tests.books.helpers import make_book
from tests.helpers import ApiUser, assert_problem
from tests.security.support import API, api_endpoints

BOUNDED = (400, 413, 422)


def _paged_endpoints(app: FastAPI, param: str = "limit") -> list[str]:
    urls = []
    for endpoint in api_endpoints(app):
        names = {p.alias for p in endpoint.dependant.query_params}
        if endpoint.method == "GET" and param in names:
            urls.append(endpoint.url())
    return urls


async def test_every_paged_route_refuses_a_huge_limit(
    app: FastAPI, client: httpx.AsyncClient, admin: ApiUser
) -> None:
    urls = _paged_endpoints(app)
    assert len(urls) >= 10, urls
    for url in urls:
        for limit in ("1000000000", "501", "0", "-1", "1e9", "99999999999999999999999"):
            resp = await client.get(url, params={"limit": limit}, headers=admin.headers)
            assert_problem(resp, 422, "validation-error")


async def test_every_paged_route_refuses_a_huge_cursor(
    app: FastAPI, client: httpx.AsyncClient, admin: ApiUser
) -> None:
    urls = _paged_endpoints(app, "cursor")
    assert len(urls) >= 10, urls
    for url in urls:
        resp = await client.get(url, params={"cursor": "A" * 10_000}, headers=admin.headers)
        assert_problem(resp, 422, "validation-error")


async def test_huge_json_body_is_413(client: httpx.AsyncClient, admin: ApiUser) -> None:
    body = b'{"name": "' + b"x" * 2_000_000 + b'"}'
    resp = await client.post(
        f"{API}/books", content=body, headers={**admin.headers, "Content-Type": "application/json"}
    )
    assert_problem(resp, 413, "payload-too-large")


async def test_huge_chunked_json_body_is_413(client: httpx.AsyncClient, admin: ApiUser) -> None:
    """Without a Content-Length the limit is enforced while reading."""

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"name": "'
        for _ in range(40):
            yield b"x" * 65_536
        yield b'"}'

    resp = await client.post(
        f"{API}/books",
        content=chunks(),
        headers={**admin.headers, "Content-Type": "application/json"},
    )
    assert_problem(resp, 413, "payload-too-large")


@pytest.mark.parametrize("content_type", ["text/csv", "text/plain", "application/octet-stream"])
async def test_json_routes_keep_the_json_limit_whatever_the_content_type(
    client: httpx.AsyncClient, content_type: str
) -> None:
    body = b"x" * 2_000_000
    resp = await client.post(
        f"{API}/auth/register", content=body, headers={"Content-Type": content_type}
    )
    assert_problem(resp, 413, "payload-too-large")


@pytest.mark.parametrize("depth", [1_000, 10_000, 100_000])
@pytest.mark.parametrize("url", ["/auth/register", "/books"])
async def test_deeply_nested_json_is_refused_not_500(
    client: httpx.AsyncClient, admin: ApiUser, url: str, depth: int
) -> None:
    body = b"[" * depth + b"]" * depth
    resp = await client.post(
        f"{API}{url}", content=body, headers={**admin.headers, "Content-Type": "application/json"}
    )
    assert resp.status_code in BOUNDED, resp.text
    assert resp.headers["content-type"].startswith("application/problem+json")


async def test_deeply_nested_metadata_is_422(client: httpx.AsyncClient, admin: ApiUser) -> None:
    nested: object = "leaf"
    for _ in range(300):
        nested = {"k": nested}
    resp = await client.post(
        f"{API}/books", json={"name": "deep", "metadata": nested}, headers=admin.headers
    )
    assert_problem(resp, 422, "validation-error")


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b"code\nOK-1\n" + b"Z" * 200_000 + b"\nOK-2\n", id="bare-field"),
        pytest.param(b'code\nOK-1\n"' + b"Z" * 200_000 + b'"\nOK-2\n', id="quoted-field"),
        pytest.param(b'code\n"OK-1\n' + b"Z\n" * 100_000 + b'"\n', id="quoted-newlines"),
    ],
)
async def test_csv_with_a_200k_field_is_invalid_csv(
    client: httpx.AsyncClient, admin: ApiUser, payload: bytes
) -> None:
    book = await make_book(client, admin)
    resp = await client.post(
        f"{API}/books/{book['id']}/codes",
        content=payload,
        headers={**admin.headers, "Content-Type": "text/csv"},
    )
    assert_problem(resp, 422, "invalid-csv")
    assert len(resp.content) < 20_000  # the offending field is not echoed back whole
    stats = (await client.get(f"{API}/books/{book['id']}", headers=admin.headers)).json()
    assert stats["stats"]["total"] == 0


async def test_multipart_with_many_parts_is_bounded(
    client: httpx.AsyncClient, admin: ApiUser
) -> None:
    book = await make_book(client, admin)
    url = f"{API}/books/{book['id']}/codes"
    many_fields = await client.post(
        url,
        data={f"f{i}": "x" for i in range(5_000)},
        files={"file": ("codes.csv", b"MP-1\n", "text/csv")},
        headers=admin.headers,
    )
    assert many_fields.status_code in BOUNDED, many_fields.text
    many_files = await client.post(
        url,
        files=[("file", (f"c{i}.csv", f"MP-{i}\n".encode(), "text/csv")) for i in range(500)],
        headers=admin.headers,
    )
    assert many_files.status_code in BOUNDED, many_files.text
    stats = (await client.get(f"{API}/books/{book['id']}", headers=admin.headers)).json()
    assert stats["stats"]["total"] == 0


async def test_login_form_with_many_parts_is_bounded(client: httpx.AsyncClient) -> None:
    started = time.monotonic()
    multipart = await client.post(
        f"{API}/auth/token",
        data={
            "username": "a@example.com",
            "password": "x" * 8,
            **{f"f{i}": "x" for i in range(5_000)},
        },
        files={"extra": ("x.bin", b"x", "application/octet-stream")},
    )
    assert multipart.status_code in (*BOUNDED, 401), multipart.text
    encoded = b"username=a%40example.com&password=xxxxxxxx&" + b"&".join(
        b"f=%d" % i for i in range(150_000)
    )
    urlencoded = await client.post(
        f"{API}/auth/token",
        content=encoded,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert urlencoded.status_code in (*BOUNDED, 401), urlencoded.text
    assert time.monotonic() - started < 15


@pytest.mark.parametrize("size", [65, 10_000])
async def test_oversized_code_in_path_is_not_found_not_500(
    client: httpx.AsyncClient, user: ApiUser, size: int
) -> None:
    code = "A" * size
    for method, suffix in (("GET", ""), ("POST", "/validate"), ("POST", "/lock")):
        resp = await client.request(method, f"{API}/codes/{code}{suffix}", headers=user.headers)
        assert resp.status_code in (404, 422), resp.text
        assert len(str(resp.json()["detail"])) < 200  # the detail does not echo it whole


async def test_oversized_lists_in_bodies_are_422(client: httpx.AsyncClient, user: ApiUser) -> None:
    resp = await client.put(
        f"{API}/me/profile", json={"tags": [f"t{i}" for i in range(10_000)]}, headers=user.headers
    )
    assert_problem(resp, 422, "validation-error")
    resp = await client.put(
        f"{API}/me/profile", json={"tags": ["x" * 100_000]}, headers=user.headers
    )
    assert_problem(resp, 422, "validation-error")


async def test_generate_refuses_counts_over_the_bound(
    client: httpx.AsyncClient, admin: ApiUser
) -> None:
    book = await make_book(client, admin)
    for count in (10_000_001, 10**12, -1, 0):
        resp = await client.post(
            f"{API}/books/{book['id']}/codes/generate", json={"count": count}, headers=admin.headers
        )
        assert_problem(resp, 422, "validation-error")
    unknown = await client.post(
        f"{API}/books/{uuid.uuid4()}/codes/generate", json={"count": 1}, headers=admin.headers
    )
    assert_problem(unknown, 404, "not-found")
