from __future__ import annotations

from typing import Any

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from app.books.imports import CopyFeed
from tests.books.helpers import API, make_book, unique_codes
from tests.helpers import ApiUser, assert_problem


async def _upload(
    client: httpx.AsyncClient,
    admin: ApiUser,
    book_id: str,
    body: bytes,
    content_type: str = "text/csv",
    **headers: str,
) -> httpx.Response:
    return await client.post(
        f"{API}/books/{book_id}/codes",
        content=body,
        headers={**admin.headers, "Content-Type": content_type, **headers},
    )


async def _codes_of(conn: AsyncConnection, book_id: str) -> list[str]:
    rows = await conn.execute(
        text("SELECT code FROM codes WHERE book_id = :b ORDER BY code"), {"b": book_id}
    )
    return [r[0] for r in rows]


async def test_import_bom_crlf_header_blank_lines_trim_and_case(
    client: httpx.AsyncClient, admin: ApiUser, conn: AsyncConnection
) -> None:
    book = await make_book(client, admin)
    body = "\ufeffcode\r\n  abc-1 \r\n\r\nABC-2\r\n   \r\nabc-1\r\nx_y\r\n".encode()
    resp = await _upload(client, admin, book["id"], body)
    assert resp.status_code == 201, resp.text
    assert resp.json() == {
        "received": 4,
        "inserted": 3,
        "duplicates_in_file": 1,
        "already_present": 0,
    }
    assert await _codes_of(conn, book["id"]) == ["ABC-1", "ABC-2", "X_Y"]
    imports = (
        await conn.execute(
            text("SELECT received, inserted FROM imports WHERE book_id = :b"), {"b": book["id"]}
        )
    ).all()
    assert [tuple(r) for r in imports] == [(4, 3)]


async def test_import_without_trailing_newline_and_plain_text(
    client: httpx.AsyncClient, admin: ApiUser, conn: AsyncConnection
) -> None:
    book = await make_book(client, admin)
    resp = await _upload(client, admin, book["id"], b"A1\nB2", "text/plain; charset=utf-8")
    assert resp.status_code == 201, resp.text
    assert resp.json()["inserted"] == 2


async def test_invalid_lines_are_422_with_line_numbers_and_nothing_stored(
    client: httpx.AsyncClient, admin: ApiUser, conn: AsyncConnection
) -> None:
    book = await make_book(client, admin)
    long_code = "A" * 65
    body = f"code\nGOOD-1\nbad code\n\n{long_code}\nwith,comma\nnul\x00x\nGOOD-2\nbad\\slash\ttab\n"
    resp = await _upload(client, admin, book["id"], body.encode())
    problem = assert_problem(resp, 422, "invalid-csv")
    errors: list[dict[str, Any]] = problem["errors"]  # type: ignore[assignment]
    assert [e["line"] for e in errors] == [3, 5, 6, 7, 9]
    assert errors[0]["code"] == "bad code"
    assert "64" in errors[1]["reason"]
    assert errors[4]["code"] == "bad\\slash\ttab"
    assert await _codes_of(conn, book["id"]) == []


async def test_invalid_utf8_is_invalid_csv(client: httpx.AsyncClient, admin: ApiUser) -> None:
    book = await make_book(client, admin)
    resp = await _upload(client, admin, book["id"], b"OK-1\n\xff\xfe\nOK-2\n")
    problem = assert_problem(resp, 422, "invalid-csv")
    assert problem["errors"][0]["line"] == 2  # type: ignore[index]


async def test_huge_line_is_reported_not_buffered(
    client: httpx.AsyncClient, admin: ApiUser
) -> None:
    book = await make_book(client, admin)
    resp = await _upload(client, admin, book["id"], b"OK-1\n" + b"Z" * 3_000_000 + b"\nOK-2\n")
    problem = assert_problem(resp, 422, "invalid-csv")
    error = problem["errors"][0]  # type: ignore[index]
    assert error["line"] == 2 and len(error["code"]) <= 100


async def test_code_in_another_book_is_409_and_nothing_stored(
    client: httpx.AsyncClient, admin: ApiUser, conn: AsyncConnection
) -> None:
    first = await make_book(client, admin)
    second = await make_book(client, admin)
    codes = unique_codes(3)
    await _upload(client, admin, first["id"], "\n".join(codes).encode())
    resp = await _upload(
        client, admin, second["id"], f"NEW-{codes[0]}\n{codes[1].lower()}\n".encode()
    )
    problem = assert_problem(resp, 409, "code-exists")
    assert problem["codes"] == [{"line": 2, "code": codes[1]}]
    assert await _codes_of(conn, second["id"]) == []


async def test_retried_upload_counts_already_present(
    client: httpx.AsyncClient, admin: ApiUser
) -> None:
    book = await make_book(client, admin)
    body = "\n".join(unique_codes(5)).encode()
    assert (await _upload(client, admin, book["id"], body)).json()["inserted"] == 5
    again = await _upload(client, admin, book["id"], body)
    assert again.status_code == 201
    assert again.json() == {
        "received": 5,
        "inserted": 0,
        "duplicates_in_file": 0,
        "already_present": 5,
    }


async def test_multipart_upload(client: httpx.AsyncClient, admin: ApiUser) -> None:
    book = await make_book(client, admin)
    resp = await client.post(
        f"{API}/books/{book['id']}/codes",
        files={"file": ("codes.csv", b"code\nM-1\nM-2\n", "text/csv")},
        headers=admin.headers,
    )
    assert resp.status_code == 201, resp.text
    assert resp.json()["inserted"] == 2
    missing = await client.post(
        f"{API}/books/{book['id']}/codes",
        files={"other": ("codes.csv", b"M-3\n", "text/csv")},
        headers=admin.headers,
    )
    assert_problem(missing, 422, "validation-error")


async def test_non_csv_is_415(client: httpx.AsyncClient, admin: ApiUser) -> None:
    book = await make_book(client, admin)
    resp = await _upload(client, admin, book["id"], b'{"a": 1}', "application/json")
    assert_problem(resp, 415, "unsupported-media-type")


async def test_import_into_unknown_book_is_404(client: httpx.AsyncClient, admin: ApiUser) -> None:
    resp = await _upload(client, admin, "00000000-0000-0000-0000-000000000000", b"A\n")
    assert_problem(resp, 404, "not-found")


async def test_import_idempotency_key_replays(
    client: httpx.AsyncClient, admin: ApiUser, conn: AsyncConnection
) -> None:
    book = await make_book(client, admin)
    body = "\n".join(unique_codes(4)).encode()
    first = await _upload(client, admin, book["id"], body, **{"Idempotency-Key": "imp-1"})
    second = await _upload(client, admin, book["id"], body, **{"Idempotency-Key": "imp-1"})
    assert first.json() == second.json() and second.headers["idempotent-replayed"] == "true"
    other = await _upload(client, admin, book["id"], b"ZZ-1\n", **{"Idempotency-Key": "imp-1"})
    assert_problem(other, 422, "idempotency-key-reused")
    count = (
        await conn.execute(
            text("SELECT count(*) FROM imports WHERE book_id = :b"), {"b": book["id"]}
        )
    ).scalar_one()
    assert count == 1


def test_copy_feed_handles_bom_split_across_chunks_and_crlf() -> None:
    feed = CopyFeed()
    out = b"".join(feed.feed(bytes([b])) for b in b"\xef\xbb\xbfcode\r\nA1\r\nB2") + feed.finish()
    assert out == b"code\nA1\nB2\n"
