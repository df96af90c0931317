"""Checksummed codes: the check character catches every single-character error and every
adjacent transposition (proved exhaustively on short codes), the SQL check agrees with the
Python one, and a mistyped code of a checksum book is refused (422 `code-mistyped`) without
reading the code tables."""

from __future__ import annotations

import itertools
import uuid
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from app.books.checksum import ALPHABET, check_char, is_valid, mistyped
from tests.books.helpers import API, make_book
from tests.helpers import ApiUser, assert_problem

OUTSIDE = "01ILO"  # look-alikes the alphabet leaves out


def _codes(payload_length: int) -> list[str]:
    return [
        body + check_char(body)
        for body in map("".join, itertools.product(ALPHABET, repeat=payload_length))
    ]


@pytest.mark.parametrize("payload_length", [1, 2, 3])
def test_every_single_character_error_is_caught(payload_length: int) -> None:
    tried = 0
    for code in _codes(payload_length):
        assert is_valid(code, 0)
        for pos, wrong in itertools.product(range(len(code)), ALPHABET + OUTSIDE):
            if wrong == code[pos]:
                continue
            typo = code[:pos] + wrong + code[pos + 1 :]
            assert not is_valid(typo, 0), (code, typo)
            tried += 1
    print(f"payload {payload_length}: {tried} single-character errors, all caught")
    assert tried == 31**payload_length * (payload_length + 1) * 35


@pytest.mark.parametrize("payload_length", [1, 2, 3])
def test_every_adjacent_transposition_is_caught(payload_length: int) -> None:
    tried = 0
    for code in _codes(payload_length):
        for pos in range(len(code) - 1):
            a, b = code[pos], code[pos + 1]
            if a == b:
                continue
            swapped = code[:pos] + b + a + code[pos + 2 :]
            assert not is_valid(swapped, 0), (code, swapped)
            tried += 1
    print(f"payload {payload_length}: {tried} adjacent transpositions, all caught")
    assert tried > 0


def test_the_check_covers_what_follows_the_prefix_and_skips_separators() -> None:
    body = "2345-ABCD"
    code = "SUMMER-" + body + check_char(body)
    assert is_valid(code, len("SUMMER-"))
    assert is_valid(code.lower(), len("SUMMER-"))
    assert not mistyped(code, ["SUMMER-"])
    assert mistyped(code[:-1] + ("2" if code[-1] != "2" else "3"), ["SUMMER-"])
    assert not mistyped("WINTER-0000", ["SUMMER-"])  # outside every namespace
    assert not is_valid("SUMMER-", len("SUMMER-"))


async def test_sql_check_agrees_with_python(pg: asyncpg.Connection) -> None:
    samples = [*_codes(2)[::7], "SUMMER-2345-ABCD" + check_char("2345-ABCD")]
    samples += [c[:-1] + ALPHABET[(ALPHABET.index(c[-1]) + 1) % 31] for c in samples]
    samples += ["P-22O", "P-", "P-2-", "P-ab", "P-a" + check_char("a")]
    for code in samples:
        prefix_length = code.index("-") + 1 if "-" in code else 0
        in_sql = await pg.fetchval("SELECT code_check_ok($1, $2)", code, prefix_length)
        assert in_sql == is_valid(code, prefix_length), code


# --- through the API ----------------------------------------------------------------------


def _prefix() -> str:
    return f"T{uuid.uuid4().hex[:6].upper()}-"


async def _generate(
    client: httpx.AsyncClient, admin: ApiUser, book_id: str, **body: Any
) -> httpx.Response:
    return await client.post(
        f"{API}/books/{book_id}/codes/generate", json=body, headers=admin.headers
    )


async def _codes_of(client: httpx.AsyncClient, admin: ApiUser, book_id: str) -> list[str]:
    resp = await client.get(f"{API}/books/{book_id}/codes?limit=500", headers=admin.headers)
    assert resp.status_code == 200, resp.text
    return [c["code"] for c in resp.json()["items"]]


def _mistype(code: str) -> str:
    last = code[-1]
    return code[:-1] + ALPHABET[(ALPHABET.index(last) + 1) % len(ALPHABET)]


async def _code_table_reads(conn: AsyncConnection) -> int:
    """Scans of `codes` by this transaction so far (the requests share it)."""
    row = await conn.execute(
        text(
            "SELECT coalesce(seq_scan, 0) + coalesce(idx_scan, 0) FROM pg_stat_xact_user_tables"
            " WHERE relname = 'codes'"
        )
    )
    return int(row.scalar_one())


async def test_generated_codes_carry_a_check_character(
    client: httpx.AsyncClient, admin: ApiUser
) -> None:
    book = await make_book(client, admin)
    prefix = _prefix()
    resp = await _generate(client, admin, book["id"], count=50, prefix=prefix, checksum=True)
    assert resp.status_code == 201, resp.text
    codes = await _codes_of(client, admin, book["id"])
    assert len(codes) == 50
    assert all(c.startswith(prefix) and len(c) == len(prefix) + 11 for c in codes)
    assert all(is_valid(c, len(prefix)) for c in codes)


async def test_the_book_default_applies_and_a_generate_may_turn_it_off(
    client: httpx.AsyncClient, admin: ApiUser
) -> None:
    book = await make_book(client, admin, checksum=True)
    assert book["checksum"] is True
    prefix = _prefix()
    resp = await _generate(client, admin, book["id"], count=20, pattern=prefix + "####")
    assert resp.status_code == 201, resp.text
    other = _prefix()
    resp = await _generate(
        client, admin, book["id"], count=20, pattern=other + "####", checksum=False
    )
    assert resp.status_code == 201, resp.text
    codes = await _codes_of(client, admin, book["id"])
    checked = [c for c in codes if c.startswith(prefix)]
    plain = [c for c in codes if c.startswith(other)]
    assert len(checked) == len(plain) == 20
    assert all(len(c) == len(prefix) + 5 and is_valid(c, len(prefix)) for c in checked)
    assert all(len(c) == len(other) + 4 for c in plain)


async def test_checksum_needs_a_literal_prefix(client: httpx.AsyncClient, admin: ApiUser) -> None:
    book = await make_book(client, admin)
    resp = await _generate(client, admin, book["id"], count=5, length=8, checksum=True)
    assert_problem(resp, 422, "validation-error")
    resp = await _generate(client, admin, book["id"], count=5, pattern="X-##O#", checksum=True)
    assert_problem(resp, 422, "validation-error")


async def test_a_mistyped_code_is_refused_without_reading_the_code_tables(
    client: httpx.AsyncClient, admin: ApiUser, user: ApiUser, conn: AsyncConnection
) -> None:
    book = await make_book(client, admin, max_codes_per_user=None)
    prefix = _prefix()
    resp = await _generate(client, admin, book["id"], count=3, prefix=prefix, checksum=True)
    assert resp.status_code == 201, resp.text
    code = (await _codes_of(client, admin, book["id"]))[0]
    resp = await client.post(f"{API}/codes/{code}/assign", headers=user.headers)
    assert resp.status_code == 201, resp.text
    typo = _mistype(code)
    for who, path in [
        (user, "lock"),
        (user, "redeem"),
        (user, "validate"),
        (user, "assign"),
        (admin, "redeem"),
    ]:
        before = await _code_table_reads(conn)
        resp = await client.post(f"{API}/codes/{typo.lower()}/{path}", headers=who.headers)
        assert_problem(resp, 422, "code-mistyped")
        assert await _code_table_reads(conn) == before, f"{path} read the code tables"
    # The real code still works, and reading it does scan the table (the probe can see it).
    before = await _code_table_reads(conn)
    resp = await client.post(f"{API}/codes/{code}/redeem", headers=user.headers)
    assert resp.status_code == 200, resp.text
    assert await _code_table_reads(conn) > before


async def test_codes_outside_a_checksum_namespace_are_looked_up_as_before(
    client: httpx.AsyncClient, admin: ApiUser, user: ApiUser
) -> None:
    book = await make_book(client, admin)
    prefix = _prefix()
    resp = await _generate(client, admin, book["id"], count=3, prefix=prefix, checksum=True)
    assert resp.status_code == 201, resp.text
    resp = await client.post(f"{API}/codes/ZZ{prefix}2345/lock", headers=user.headers)
    assert_problem(resp, 404, "not-found")


async def test_an_upload_under_a_checksum_prefix_must_carry_valid_check_characters(
    client: httpx.AsyncClient, admin: ApiUser
) -> None:
    book = await make_book(client, admin)
    prefix = _prefix()
    resp = await _generate(client, admin, book["id"], count=1, prefix=prefix, checksum=True)
    assert resp.status_code == 201, resp.text
    good = prefix + "2345" + check_char("2345")
    bad = _mistype(good)
    upload = {**admin.headers, "Content-Type": "text/csv"}
    resp = await client.post(
        f"{API}/books/{book['id']}/codes", content=f"code\n{good}\n{bad}\n", headers=upload
    )
    problem = assert_problem(resp, 422, "invalid-csv")
    assert problem["errors"] == [
        {"line": 3, "code": bad, "reason": "wrong check character for its checksum prefix"}
    ]
    resp = await client.post(f"{API}/books/{book['id']}/codes", content=good, headers=upload)
    assert resp.status_code == 201, resp.text
    # Plain codes generated under a claimed prefix are checked codes too, or none at all.
    resp = await _generate(
        client, admin, book["id"], count=3, pattern=prefix + "##??", checksum=False
    )
    assert resp.status_code in (201, 422), resp.text
    for code in await _codes_of(client, admin, book["id"]):
        assert is_valid(code, len(prefix)), code


async def test_claiming_a_prefix_already_used_by_plain_codes_is_refused(
    client: httpx.AsyncClient, admin: ApiUser
) -> None:
    book = await make_book(client, admin)
    prefix = _prefix()
    plain = prefix + "2345" + _mistype("X" + check_char("2345"))[-1]
    upload = {**admin.headers, "Content-Type": "text/csv"}
    resp = await client.post(f"{API}/books/{book['id']}/codes", content=plain, headers=upload)
    assert resp.status_code == 201, resp.text
    resp = await _generate(client, admin, book["id"], count=3, prefix=prefix, checksum=True)
    problem = assert_problem(resp, 422, "validation-error")
    assert plain in str(problem["detail"])
