"""Property-based fuzzing of the CSV import: the COPY feed and code normalisation as pure
functions, then the upload endpoint end to end against a model of the documented rules
(BOM and CRLF stripped, blank lines skipped, `code` header on line 1, codes trimmed of
spaces and tabs, validated, upper-cased and de-duplicated; any invalid line rejects the file
and names its line, counted from 1, header included)."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import Any

import httpx
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from app.books.imports import MAX_LINE_BYTES, MAX_REPORTED, CopyFeed
from app.books.service import normalize_code
from app.core.problems import NotFound
from tests.books.helpers import API, make_book
from tests.helpers import ApiUser, assert_problem

BOM = b"\xef\xbb\xbf"
STORED = re.compile(r"[A-Z0-9_-]{1,64}")
ACCEPTED = re.compile(r"[A-Za-z0-9_-]{1,64}")
CODE_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"

FUZZ = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# Look-alikes of code characters, separators, whitespace and COPY escapes: never valid.
NASTY_CHARS = [
    " ",
    "\t",
    "\r",
    "\x00",
    "\x0b",
    "\x0c",
    "\x85",
    "\u00a0",
    "\u2007",
    "\u200b",
    "\u2028",
    "\u3000",
    "\ufeff",
    ",",
    ";",
    ".",
    '"',
    "'",
    "\\",
    "\\.",
    "\\N",
    "\u00e9",  # e acute
    "\u00df",  # sharp s, upper-cases to SS
    "\u017f",  # long s, upper-cases to ASCII S
    "\u0131",  # dotless i, upper-cases to ASCII I
    "\u212a",  # Kelvin sign, lower-cases to ASCII k
    "\ufb01",  # fi ligature, upper-cases to FI
    "\uff21",  # fullwidth A
    "\uff11",  # fullwidth 1
    "\u0663",  # Arabic-Indic 3
    "\u096d",  # Devanagari 7
    "\u00b2",  # superscript 2
    "\u216b",  # Roman numeral twelve
    "\uff0d",  # fullwidth hyphen-minus
    "\u2010",  # hyphen
    "\uff3f",  # fullwidth low line
    "\U0001f600",
]
NASTY_BYTES = [
    b"\xff",
    b"\xfe",
    b"\xc3",  # truncated two-byte sequence
    b"\xc0\xaf",  # overlong encoding of '/'
    b"\xed\xa0\x80",  # lone high surrogate, as CESU/WTF-8 would write it
    b"\xed\xbf\xbf",  # lone low surrogate
    b"\xf4\x90\x80\x80",  # beyond U+10FFFF
    b"\x80",
]


# --- a model of the reader -------------------------------------------------------------


def model_lines(body: bytes) -> list[str]:
    """The rows the staging table should hold: one per physical line, BOM and the `\\r` of
    CRLF removed, undecodable bytes and NUL as U+FFFD."""
    body = body.removeprefix(BOM)
    if not body:
        return []
    lines = body.split(b"\n")
    if body.endswith(b"\n"):
        lines.pop()
    return [
        line.removesuffix(b"\r").decode("utf-8", "replace").replace("\x00", "\ufffd")
        for line in lines
    ]


def classify(row: str) -> str | None:
    """None for a blank line, the stored code for a valid one, '!' for an invalid one."""
    trimmed = row.strip(" \t")
    if not trimmed:
        return None
    return trimmed.upper() if ACCEPTED.fullmatch(trimmed) else "!"


@dataclass
class Expected:
    received: int
    codes: list[str]
    invalid: list[tuple[int, str]]  # (line, trimmed text)


def expected_import(body: bytes) -> Expected:
    received, codes, invalid = 0, set(), []
    for number, row in enumerate(model_lines(body), start=1):
        if number == 1 and row.strip(" \t").lower() == "code":
            continue
        kind = classify(row)
        if kind is None:
            continue
        if kind == "!":
            invalid.append((number, row.strip(" \t")))
        else:
            received += 1
            codes.add(kind)
    return Expected(received, sorted(codes), invalid)


def run_feed(body: bytes, cuts: list[int]) -> bytes:
    feed = CopyFeed()
    out = []
    start = 0
    for cut in sorted(cuts):
        out.append(feed.feed(body[start:cut]))
        start = cut
    out.append(feed.feed(body[start:]))
    out.append(feed.finish())
    assert feed.bytes_read == len(body)
    return b"".join(out)


_UNESCAPE = {"\\": "\\", "t": "\t", "r": "\r"}


def copy_rows(out: bytes) -> list[str]:
    """Parse COPY text format strictly: valid UTF-8, no NUL, only the escapes we emit."""
    decoded = out.decode("utf-8")  # raises on anything PostgreSQL would refuse
    assert "\x00" not in decoded
    if not decoded:
        return []
    assert decoded.endswith("\n"), decoded[-20:]
    rows = []
    for line in decoded[:-1].split("\n"):
        assert "\t" not in line and "\r" not in line, line
        chars, i = [], 0
        while i < len(line):
            if line[i] == "\\":
                assert line[i + 1 : i + 2] in _UNESCAPE, line
                chars.append(_UNESCAPE[line[i + 1]])
                i += 2
            else:
                chars.append(line[i])
                i += 1
        rows.append("".join(chars))
    return rows


# --- strategies --------------------------------------------------------------------------

nasty_text = st.lists(
    st.one_of(
        st.sampled_from(CODE_CHARS),
        st.sampled_from(NASTY_CHARS),
        st.characters(codec=None),  # anything, lone surrogates included
        st.characters(categories=["Lu", "Ll", "Lt", "Lo", "Nd", "Nl", "No", "Zs", "Cc"]),
    ),
    max_size=60,
).map("".join)

_pieces = [
    st.binary(max_size=12),
    st.sampled_from(NASTY_BYTES),
    st.sampled_from([b"\n", b"\r", b"\r\n", b"\n\r", BOM, b"\x00", b"code", b" ", b"\t"]),
    nasty_text.map(lambda s: s.encode("utf-8", "surrogatepass")),
]
_long_lines = st.sampled_from(
    [b"Z" * 1500, b"Q" * (MAX_LINE_BYTES - 1), b"\xe2\x82\xac" * 400, b"x\t" * 600]
)
nasty_bytes = st.lists(st.one_of(*_pieces, _long_lines), max_size=25).map(b"".join)
short_nasty_bytes = st.lists(st.one_of(*_pieces), max_size=25).map(b"".join)


@st.composite
def bodies_and_cuts(draw: st.DrawFn, body: st.SearchStrategy[bytes]) -> tuple[bytes, list[int]]:
    data = draw(body)
    cuts = draw(st.lists(st.integers(0, len(data)), max_size=8))
    return data, cuts


def _short_lines(body: bytes) -> bool:
    return all(len(line) <= MAX_LINE_BYTES for line in body.removeprefix(BOM).split(b"\n"))


# --- pure functions ----------------------------------------------------------------------


@FUZZ
@given(raw=st.one_of(nasty_text, st.from_regex(ACCEPTED, fullmatch=True)))
@example(raw="")
@example(raw="A" * 65)
@example(raw="abc\n")
@example(raw="\ud800")
@example(raw="\u00df")
@example(raw="\ufb01")
def test_normalize_code_accepts_only_codes_and_upper_cases(raw: str) -> None:
    try:
        code = normalize_code(raw)
    except NotFound:
        assert not ACCEPTED.fullmatch(raw)
        return
    assert ACCEPTED.fullmatch(raw)
    assert STORED.fullmatch(code), code
    assert code == raw.upper() == code.upper()
    assert normalize_code(code) == code
    assert normalize_code(raw.lower()) == code
    assert normalize_code(raw.swapcase()) == code


@FUZZ
@given(raw=st.from_regex(ACCEPTED, fullmatch=True))
def test_every_valid_code_round_trips(raw: str) -> None:
    code = normalize_code(raw)
    assert STORED.fullmatch(code) and code == raw.upper()
    assert normalize_code(code) == code
    assert classify(f" \t{raw}\t ") == code


@FUZZ
@given(case=bodies_and_cuts(nasty_bytes))
@example(case=(b"", []))
@example(case=(BOM, [1, 2]))
@example(case=(b"\xef\xbb", []))
@example(case=(b"A\rB\r\n\r\nC\r", [2, 3]))
@example(case=(b"\\.\n\\N\nx\ty\n", [1]))
@example(case=(b"ok\n" + b"Z" * 3000 + b"\nok2", [10, 1500]))
def test_copy_feed_is_total_and_keeps_every_line(case: tuple[bytes, list[int]]) -> None:
    """Any bytes, cut into any chunks: no exception, COPY input PostgreSQL accepts, one row
    per physical line, and lines within the size limit arrive exactly as the model says."""
    body, cuts = case
    rows = copy_rows(run_feed(body, cuts))
    expected = model_lines(body)
    assert len(rows) == len(expected)
    raw_lines = body.removeprefix(BOM).split(b"\n")
    for row, want, raw in zip(rows, expected, raw_lines, strict=False):
        if len(raw) <= MAX_LINE_BYTES:
            assert row == want
        else:
            assert len(row.encode()) <= len(raw) * 3


@FUZZ
@given(case=bodies_and_cuts(short_nasty_bytes.filter(_short_lines)))
def test_copy_feed_output_does_not_depend_on_chunking(case: tuple[bytes, list[int]]) -> None:
    body, cuts = case
    assert run_feed(body, cuts) == run_feed(body, [])


long_padded_line = st.builds(
    lambda pad, code: pad + code,
    st.text(alphabet=" \t", min_size=MAX_LINE_BYTES + 1, max_size=MAX_LINE_BYTES + 200),
    st.one_of(st.from_regex(ACCEPTED, fullmatch=True), st.sampled_from(["bad code", "\u00e9"])),
).map(str.encode)


@FUZZ
@given(line=long_padded_line, cuts=st.lists(st.integers(0, 2000), max_size=4))
@example(line=b" " * (MAX_LINE_BYTES + 1) + b"A", cuts=[])
def test_over_long_lines_keep_their_meaning(line: bytes, cuts: list[int]) -> None:
    body = b"OK-1\n" + line
    rows = copy_rows(run_feed(body, cuts))
    assert [classify(r) for r in rows] == [classify(r) for r in model_lines(body)]


# --- through the API ---------------------------------------------------------------------


async def _upload(
    client: httpx.AsyncClient, admin: ApiUser, book_id: str, body: bytes
) -> httpx.Response:
    return await client.post(
        f"{API}/books/{book_id}/codes",
        content=body,
        headers={**admin.headers, "Content-Type": "text/csv"},
    )


async def _codes_of(conn: AsyncConnection, book_id: str) -> list[str]:
    rows = await conn.execute(
        text("SELECT code FROM codes WHERE book_id = :b ORDER BY code"), {"b": book_id}
    )
    return [r[0] for r in rows]


async def _imports_of(conn: AsyncConnection, book_id: str) -> int:
    count = await conn.execute(
        text("SELECT count(*) FROM imports WHERE book_id = :b"), {"b": book_id}
    )
    return int(count.scalar_one())


def _recase(code: str, how: str) -> str:
    return {"upper": code.upper(), "lower": code.lower(), "swap": code.swapcase()}.get(how, code)


@dataclass
class CsvFile:
    """A valid file as lines (without endings), rendered for one example's code prefix."""

    header: str | None
    entries: list[tuple[int, str, str, str] | str]  # (code index, case, left, right) | blank
    suffixes: list[str]
    bom: bool
    crlf: bool
    final_newline: bool

    def lines(self, tag: str) -> list[bytes]:
        out = [] if self.header is None else [self.header.encode()]
        for entry in self.entries:
            if isinstance(entry, str):
                out.append(entry.encode())
            else:
                index, how, left, right = entry
                code = _recase(f"{tag}{index}-{self.suffixes[index]}", how)
                out.append(f"{left}{code}{right}".encode())
        return out

    def render(self, lines: list[bytes]) -> bytes:
        end = b"\r\n" if self.crlf else b"\n"
        body = end.join(lines) + (end if self.final_newline and lines else b"")
        return (BOM if self.bom else b"") + body

    def codes(self, tag: str) -> list[str]:
        used = {e[0] for e in self.entries if not isinstance(e, str)}
        return sorted(f"{tag}{i}-{self.suffixes[i]}".upper() for i in used)

    @property
    def received(self) -> int:
        return sum(1 for e in self.entries if not isinstance(e, str))


padding = st.text(alphabet=" \t", max_size=4)
blank = st.text(alphabet=" \t", max_size=6)


@st.composite
def csv_files(draw: st.DrawFn) -> CsvFile:
    suffixes = draw(
        st.lists(
            st.text(alphabet=CODE_CHARS, max_size=30), min_size=1, max_size=8, unique_by=str.upper
        )
    )
    entry = st.one_of(
        st.tuples(
            st.integers(0, len(suffixes) - 1),
            st.sampled_from(["as-is", "upper", "lower", "swap"]),
            padding,
            padding,
        ),
        blank,
    )
    return CsvFile(
        header=draw(st.none() | st.sampled_from(["code", "CODE", " Code\t", "cOdE "])),
        entries=draw(st.lists(entry, max_size=20)),
        suffixes=suffixes,
        bom=draw(st.booleans()),
        crlf=draw(st.booleans()),
        final_newline=draw(st.booleans()),
    )


def _tag() -> str:
    return f"F{uuid.uuid4().hex[:10]}"  # distinct per example: no collisions in the shared tx


@FUZZ
@given(csv=csv_files())
@example(csv=CsvFile("code", [], ["X"], bom=True, crlf=True, final_newline=True))
@example(csv=CsvFile(None, [(0, "lower", "\t", " "), ""], ["a"], True, False, False))
async def test_valid_files_import_the_distinct_upper_cased_codes(
    csv: CsvFile, client: httpx.AsyncClient, admin: ApiUser, conn: AsyncConnection
) -> None:
    tag = _tag()
    body = csv.render(csv.lines(tag))
    book = await make_book(client, admin)
    resp = await _upload(client, admin, book["id"], body)
    assert resp.status_code == 201, (body, resp.text)
    out = resp.json()
    codes = csv.codes(tag)
    assert out["received"] == csv.received
    assert out["inserted"] + out["duplicates_in_file"] + out["already_present"] == csv.received
    assert out == {
        "received": csv.received,
        "inserted": len(codes),
        "duplicates_in_file": csv.received - len(codes),
        "already_present": 0,
    }
    assert await _codes_of(conn, book["id"]) == codes
    # The same file again: everything is already there, nothing new is stored.
    again = await _upload(client, admin, book["id"], body)
    assert again.status_code == 201, again.text
    assert again.json() == {
        "received": csv.received,
        "inserted": 0,
        "duplicates_in_file": csv.received - len(codes),
        "already_present": len(codes),
    }
    assert await _codes_of(conn, book["id"]) == codes
    assert await _imports_of(conn, book["id"]) == 2


def _is_invalid_line(line: bytes) -> bool:
    rows = model_lines(line + b"\n")
    return len(rows) == 1 and classify(rows[0]) == "!" and len(line) <= MAX_LINE_BYTES


invalid_lines = st.one_of(
    # a code with something foreign inside or around it
    st.builds(
        lambda left, bad, right, pad: f"{pad}{left}{bad}{right}".encode("utf-8", "surrogatepass"),
        st.text(alphabet=CODE_CHARS, min_size=1, max_size=10),
        st.one_of(
            st.sampled_from(NASTY_CHARS),
            st.characters(codec=None, exclude_characters=CODE_CHARS + "\n"),
        ),
        st.text(alphabet=CODE_CHARS, min_size=1, max_size=10),
        padding,
    ),
    # bytes that are not UTF-8
    st.builds(
        lambda left, bad, right: left.encode() + bad + right.encode(),
        st.text(alphabet=CODE_CHARS, max_size=10),
        st.sampled_from(NASTY_BYTES),
        st.text(alphabet=CODE_CHARS, max_size=10),
    ),
    # too long
    st.text(alphabet=CODE_CHARS, min_size=65, max_size=300).map(str.encode),
    nasty_text.map(lambda s: s.encode("utf-8", "surrogatepass")),
).filter(_is_invalid_line)


@FUZZ
@given(csv=csv_files(), bad=invalid_lines, where=st.integers(0, 1000))
@example(
    csv=CsvFile("code", ["", (0, "as-is", "", "")], ["A"], True, True, False),
    bad=b"A\rB",
    where=1,
)
@example(csv=CsvFile(None, [], ["A"], False, False, False), bad="\u00a0A".encode(), where=0)
async def test_one_invalid_line_is_named_and_nothing_is_stored(
    csv: CsvFile,
    bad: bytes,
    where: int,
    client: httpx.AsyncClient,
    admin: ApiUser,
    conn: AsyncConnection,
) -> None:
    tag = _tag()
    lines = csv.lines(tag)
    first_data = 0 if csv.header is None else 1
    position = first_data + where % (len(lines) - first_data + 1)
    lines.insert(position, bad)
    body = csv.render(lines)
    book = await make_book(client, admin)
    resp = await _upload(client, admin, book["id"], body)
    problem = assert_problem(resp, 422, "invalid-csv")
    errors: list[dict[str, Any]] = problem["errors"]  # type: ignore[assignment]
    # The line as the file holds it: a BOM is the file's only at its very start.
    trimmed = model_lines(body)[position].strip(" \t")
    assert [e["line"] for e in errors] == [position + 1], (body, errors)
    assert errors[0]["code"] == trimmed[:100]
    assert ("64" in errors[0]["reason"]) == (len(trimmed) > 64)
    assert f"line {position + 1}" in str(problem["detail"])
    assert await _codes_of(conn, book["id"]) == []
    assert await _imports_of(conn, book["id"]) == 0


@FUZZ
@given(body=nasty_bytes)
@example(body=b"\xff\xfe\x00\x00")
@example(body=BOM + b"code\r\n\r\n\x00\n")
@example(body=b"\n".join([b"\xed\xa0\x80"] * (MAX_REPORTED + 5)))
@example(body=b"\r" * 50)
async def test_arbitrary_bytes_never_break_the_import(
    body: bytes, client: httpx.AsyncClient, admin: ApiUser, conn: AsyncConnection
) -> None:
    """No 500 whatever the bytes; where every line is within the size limit the answer is
    exactly the model's (codes like `A` may already sit in another example's book: 409)."""
    book = await make_book(client, admin)
    resp = await _upload(client, admin, book["id"], body)
    assert resp.status_code in (201, 409, 422), (body, resp.status_code, resp.text)
    event(f"status {resp.status_code}")
    stored = await _codes_of(conn, book["id"])
    if resp.status_code != 201:
        assert stored == []
    if not _short_lines(body):
        return
    want = expected_import(body)
    if want.invalid:
        problem = assert_problem(resp, 422, "invalid-csv")
        errors: list[dict[str, Any]] = problem["errors"]  # type: ignore[assignment]
        shown = want.invalid[:MAX_REPORTED]
        assert [(e["line"], e["code"]) for e in errors] == [(n, t[:100]) for n, t in shown]
        return
    if resp.status_code == 409:
        assert_problem(resp, 409, "code-exists")
        return
    assert resp.status_code == 201, resp.text
    out = resp.json()
    assert out["received"] == want.received
    assert out["inserted"] + out["duplicates_in_file"] + out["already_present"] == want.received
    assert out["already_present"] == 0 and out["inserted"] == len(want.codes)
    assert stored == want.codes


async def test_over_long_blank_padded_line_is_reported(
    client: httpx.AsyncClient, admin: ApiUser, conn: AsyncConnection
) -> None:
    book = await make_book(client, admin)
    body = b"OK-1\n" + b" " * (MAX_LINE_BYTES + 1) + b"bad code"
    resp = await _upload(client, admin, book["id"], body)
    problem = assert_problem(resp, 422, "invalid-csv")
    assert [e["line"] for e in problem["errors"]] == [2]  # type: ignore[attr-defined]
    assert await _codes_of(conn, book["id"]) == []
