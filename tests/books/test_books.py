from __future__ import annotations

import httpx

from tests.books.helpers import API, fill, make_book, unique_codes
from tests.helpers import ApiUser, assert_problem


async def test_create_book_has_defaults_stats_and_location(
    client: httpx.AsyncClient, admin: ApiUser
) -> None:
    resp = await client.post(f"{API}/books", json={"name": "Summer"}, headers=admin.headers)
    assert resp.status_code == 201, resp.text
    book = resp.json()
    assert resp.headers["location"] == f"/api/v1/books/{book['id']}"
    assert book["status"] == "active"
    assert book["max_codes_per_user"] == 1
    assert book["max_redemptions_per_code"] == 1
    assert book["max_redemptions_per_user"] is None
    assert book["lock_ttl_seconds"] == 300
    assert book["metadata"] == {}
    assert book["stats"] == {"total": 0, "unassigned": 0, "assigned": 0, "locked": 0, "redeemed": 0}


async def test_get_list_and_patch_book(client: httpx.AsyncClient, admin: ApiUser) -> None:
    book = await make_book(client, admin, max_codes_per_user=None, metadata={"a": 1})
    assert book["max_codes_per_user"] is None
    await fill(client, admin, book["id"], unique_codes(3))
    got = (await client.get(f"{API}/books/{book['id']}", headers=admin.headers)).json()
    assert got["stats"]["total"] == 3 and got["stats"]["unassigned"] == 3
    patched = await client.patch(
        f"{API}/books/{book['id']}",
        json={"status": "paused", "lock_ttl_seconds": 60, "description": "x"},
        headers=admin.headers,
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["status"] == "paused"
    assert patched.json()["lock_ttl_seconds"] == 60
    listed = await client.get(f"{API}/books?limit=500", headers=admin.headers)
    assert book["id"] in {b["id"] for b in listed.json()["items"]}


async def test_patch_metadata_null_clears_it(client: httpx.AsyncClient, admin: ApiUser) -> None:
    """The schema allows `metadata: null`; it empties the metadata (it once answered 500)."""
    book = await make_book(client, admin, metadata={"a": 1})
    resp = await client.patch(
        f"{API}/books/{book['id']}", json={"metadata": None}, headers=admin.headers
    )
    assert resp.status_code == 200, resp.text
    assert resp.json()["metadata"] == {}
    got = await client.get(f"{API}/books/{book['id']}", headers=admin.headers)
    assert got.json()["metadata"] == {}


async def test_book_pagination_walks_every_book(client: httpx.AsyncClient, admin: ApiUser) -> None:
    ids = {(await make_book(client, admin))["id"] for _ in range(3)}
    seen: set[str] = set()
    cursor = None
    for _ in range(50):
        url = f"{API}/books?limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = (await client.get(url, headers=admin.headers)).json()
        seen |= {b["id"] for b in page["items"]}
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert ids <= seen


async def test_book_validation_is_strict(client: httpx.AsyncClient, admin: ApiUser) -> None:
    for body in (
        {"name": "x", "max_codes_per_user": "1"},
        {"name": "x", "max_codes_per_user": True},
        {"name": "x", "lock_ttl_seconds": 0},
        {"name": "x", "lock_ttl_seconds": 86401},
        {"name": "x\x00"},
        {"name": "x", "metadata": {"k": "v\x00"}},
        {"name": "x", "starts_at": "2026-01-02T00:00:00Z", "expires_at": "2026-01-01T00:00:00Z"},
        {"name": "x", "starts_at": "2026-01-02T00:00:00"},
        {"name": ""},
    ):
        resp = await client.post(f"{API}/books", json=body, headers=admin.headers)
        assert_problem(resp, 422, "validation-error")


async def test_books_are_admin_only(client: httpx.AsyncClient, user: ApiUser) -> None:
    resp = await client.post(f"{API}/books", json={"name": "x"}, headers=user.headers)
    assert_problem(resp, 403, "forbidden")
    assert_problem(await client.get(f"{API}/books", headers=user.headers), 403, "forbidden")


async def test_unknown_book_is_404(client: httpx.AsyncClient, admin: ApiUser) -> None:
    resp = await client.get(
        f"{API}/books/00000000-0000-0000-0000-000000000000", headers=admin.headers
    )
    assert_problem(resp, 404, "not-found")


async def test_patch_window_inverted_is_422(client: httpx.AsyncClient, admin: ApiUser) -> None:
    book = await make_book(client, admin, expires_at="2030-01-01T00:00:00Z")
    resp = await client.patch(
        f"{API}/books/{book['id']}",
        json={"starts_at": "2031-01-01T00:00:00Z"},
        headers=admin.headers,
    )
    assert_problem(resp, 422, "validation-error")


async def test_unstorable_text_and_numbers_are_422(
    client: httpx.AsyncClient, admin: ApiUser
) -> None:
    for raw in (
        b'{"name": "x\\udb16"}',
        b'{"name": "x", "metadata": {"k": "\\ud800"}}',
        b'{"name": "x", "metadata": {"k": 123456789012345678901234567890}}',
        b'{"name": "x", "metadata": {"k": NaN}}',
    ):
        resp = await client.post(
            f"{API}/books",
            content=raw,
            headers={**admin.headers, "Content-Type": "application/json"},
        )
        assert resp.status_code in (400, 422), (raw, resp.text)
        assert resp.headers["content-type"].startswith("application/problem+json")


async def test_out_of_range_timestamps_are_422(client: httpx.AsyncClient, admin: ApiUser) -> None:
    for stamp in ("0001-01-01T01:00:01+02:00", "9999-12-31T23:00:00-05:00", "1900-01-01T00:00:00Z"):
        resp = await client.post(
            f"{API}/books", json={"name": "x", "starts_at": stamp}, headers=admin.headers
        )
        assert_problem(resp, 422, "validation-error")
