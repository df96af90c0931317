"""CSV import: stream the upload into a temporary staging table with COPY, validate and
de-duplicate in SQL, then one INSERT ... SELECT. All or nothing; memory stays flat
whatever the size of the file.

Each physical line becomes one staging row, numbered by an identity column in COPY order,
so errors name the line of the file (counted from 1, header included).
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import AsyncIterable, AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
from fastapi import Request
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.datastructures import UploadFile
from starlette.requests import ClientDisconnect

from app.books import checksum
from app.books.errors import CodeExists, InvalidCsv
from app.books.rules import CODE_MAX_LENGTH
from app.books.schemas import ImportOut
from app.core.db import raw_connection
from app.core.idempotency import Idempotency
from app.core.problems import BadRequest, NotFound, UnsupportedMediaType, ValidationFailed

CSV_TYPES = frozenset({"text/csv", "text/plain", "application/csv"})
MAX_REPORTED = 100
MAX_LINE_BYTES = 1024  # longer lines are invalid anyway; keep this much to report them
_BOM = b"\xef\xbb\xbf"
# Lines made only of these bytes go to COPY untouched (the common, fast case).
_UNSAFE = re.compile(rb"[^A-Za-z0-9_\- \n]")

OPENAPI_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "text/csv": {
                # MAX_UPLOAD_BYTES (default 256 MiB); a larger upload is 413.
                "schema": {"type": "string", "maxLength": 256 * 1_048_576},
                "example": "code\nSUMMER-2345-ABCD\nSUMMER-2346-ABCE\n",
            },
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "maxLength": 256 * 1_048_576,
                        }
                    },
                    "required": ["file"],
                }
            },
        },
    }
}


def _escape(line: bytes) -> bytes:
    """One line in COPY text format; undecodable bytes and NUL become U+FFFD (invalid)."""
    text = line.decode("utf-8", "replace").replace("\x00", "\ufffd")
    text = text.replace("\\", "\\\\").replace("\t", "\\t").replace("\r", "\\r")
    return text.encode()


class CopyFeed:
    """Turns raw upload chunks into COPY text-format lines and hashes the file."""

    def __init__(self) -> None:
        self.sha256 = hashlib.sha256()
        self.bytes_read = 0
        self._carry = b""
        self._started = False
        self._skipping = False  # inside an over-long line, dropping bytes until newline

    def feed(self, chunk: bytes) -> bytes:
        self.sha256.update(chunk)
        self.bytes_read += len(chunk)
        if self._skipping:
            newline = chunk.find(b"\n")
            if newline < 0:
                return b""
            chunk, self._skipping = chunk[newline:], False
        data = self._carry + chunk
        if not self._started:
            if len(data) < len(_BOM) and _BOM.startswith(data):
                self._carry = data
                return b""
            self._started = True
            data = data.removeprefix(_BOM)
        cut = data.rfind(b"\n")
        if cut < 0:
            self._hold(data)
            return b""
        self._hold(data[cut + 1 :])
        return self._convert(data[: cut + 1])

    def _hold(self, partial: bytes) -> None:
        """Keep the unfinished last line; past MAX_LINE_BYTES keep only its head. Leading
        blanks are dropped first (SQL trims them anyway), so a long run of them before a
        code neither hides the code nor makes the line look blank."""
        if len(partial) > MAX_LINE_BYTES:
            partial = partial.lstrip(b" \t")
        if len(partial) > MAX_LINE_BYTES:
            partial, self._skipping = partial[:MAX_LINE_BYTES], True
        self._carry = partial

    def finish(self) -> bytes:
        rest, self._carry = self._carry, b""
        if not self._started:
            rest = rest.removeprefix(_BOM)
        return self._convert(rest + b"\n") if rest else b""

    @staticmethod
    def _convert(block: bytes) -> bytes:
        block = block.replace(b"\r\n", b"\n")
        if _UNSAFE.search(block) is None:
            return block
        return b"\n".join(_escape(line) for line in block.split(b"\n"))


async def copy_source(feed: CopyFeed, chunks: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
    try:
        async for chunk in chunks:
            out = feed.feed(chunk)
            if out:
                yield out
    except ClientDisconnect as exc:
        raise BadRequest("The upload was interrupted.") from exc
    tail = feed.finish()
    if tail:
        yield tail


# --- SQL ---------------------------------------------------------------------------------

TRIMMED = "btrim(raw, E' \\t')"
DATA_LINE = f"{TRIMMED} <> '' AND NOT (line = 1 AND lower({TRIMMED}) = 'code')"

# Whether a trimmed data line `t` holds no valid code.
INVALID_TEST = f"(t !~ '^[A-Za-z0-9_-]+$' OR length(t) > {CODE_MAX_LENGTH})"

# Every invalid data line of a staging table (`{table}`), with why.
INVALID_SELECT = f"""
SELECT line, left(t, 100) AS code,
       CASE WHEN length(t) > {CODE_MAX_LENGTH} THEN 'longer than {CODE_MAX_LENGTH} characters'
            ELSE 'invalid characters (allowed: A-Z a-z 0-9 - _)' END AS reason
FROM (SELECT line, {TRIMMED} AS t FROM {{table}} WHERE {DATA_LINE}) AS s
WHERE {INVALID_TEST}
"""

_INVALID = INVALID_SELECT.format(table="import_lines") + f"ORDER BY line LIMIT {MAX_REPORTED}"

_DISTINCT = f"""
CREATE TEMP TABLE import_codes ON COMMIT DROP AS
SELECT upper({TRIMMED}) AS code, min(line) AS line, count(*) AS n
FROM import_lines WHERE {DATA_LINE}
GROUP BY 1
"""

# Codes under a claimed checksum prefix whose check character is wrong.
_UNCHECKED = f"""
SELECT line, code, 'wrong check character for its checksum prefix' AS reason
FROM import_codes i WHERE {checksum.unchecked_in_namespace("i.code")}
ORDER BY line LIMIT {MAX_REPORTED}
"""

_OVERLAP = """
SELECT count(*) FILTER (WHERE c.book_id = $1) AS present,
       count(*) FILTER (WHERE c.book_id <> $1) AS foreign_
FROM import_codes i JOIN codes c ON c.code = i.code
"""

_FOREIGN = f"""
SELECT i.line, i.code FROM import_codes i JOIN codes c ON c.code = i.code
WHERE c.book_id <> $1 ORDER BY i.line LIMIT {MAX_REPORTED}
"""

# Sorted by code, so concurrent imports meet their common codes in the same order and wait
# on each other instead of deadlocking.
_INSERT_ALL = "INSERT INTO codes (book_id, code) SELECT $1, code FROM import_codes ORDER BY code"
_INSERT_NEW = """
INSERT INTO codes (book_id, code)
SELECT $1, i.code FROM import_codes i
WHERE NOT EXISTS (SELECT 1 FROM codes c WHERE c.code = i.code)
ORDER BY i.code
"""
# After losing a race: skip what concurrent imports stored meanwhile; whose those codes
# are is checked afterwards.
_INSERT_SKIPPING = _INSERT_NEW + "ON CONFLICT (code) DO NOTHING"

_RECORD = """
INSERT INTO imports
    (book_id, actor_id, received, inserted, duplicates_in_file, already_present, file_sha256)
VALUES ($1, $2, $3, $4, $5, $6, $7)
"""


async def import_chunks(
    session: AsyncSession,
    book_id: uuid.UUID,
    actor_id: uuid.UUID | None,
    chunks: AsyncIterable[bytes],
    idem: Idempotency | None = None,
) -> ImportOut:
    """Import a CSV given as byte chunks into the book; raises and stores nothing on error."""
    conn = await raw_connection(session)
    if not await conn.fetchval("SELECT EXISTS (SELECT 1 FROM books WHERE id = $1)", book_id):
        raise NotFound(f"No book {book_id}.")
    # Bulk work: allow it time and memory for this transaction only. The lock wait too: an
    # import sharing codes with a concurrent one waits for it to end, however long it runs.
    await conn.execute(
        "SELECT set_config('statement_timeout', '900s', true),"
        " set_config('lock_timeout', '900s', true), set_config('work_mem', '128MB', true)"
    )
    await conn.execute("DROP TABLE IF EXISTS import_lines, import_codes")
    await conn.execute(
        "CREATE TEMP TABLE import_lines (line bigint GENERATED ALWAYS AS IDENTITY, raw text)"
        " ON COMMIT DROP"
    )
    feed = CopyFeed()
    await conn.copy_to_table(
        "import_lines", source=copy_source(feed, chunks), columns=["raw"], format="text"
    )
    if idem is not None:
        await idem.begin(feed.sha256.hexdigest())
    invalid = await conn.fetch(_INVALID)
    if invalid:
        raise InvalidCsv(
            f"The file has invalid lines (first at line {invalid[0]['line']}); nothing stored.",
            errors=[dict(r) for r in invalid],
        )
    await conn.execute(_DISTINCT)
    totals = await conn.fetchrow(
        "SELECT coalesce(sum(n), 0) AS received, count(*) AS distinct_ FROM import_codes"
    )
    assert totals is not None
    if await checksum.any_claimed(conn):
        unchecked = await conn.fetch(_UNCHECKED)
        if unchecked:
            raise InvalidCsv(
                f"Codes under a checksum prefix have a wrong check character (first at line"
                f" {unchecked[0]['line']}); nothing stored.",
                errors=[dict(r) for r in unchecked],
            )
    overlap = await conn.fetchrow(_OVERLAP, book_id)
    assert overlap is not None
    if overlap["foreign_"]:
        rows = await conn.fetch(_FOREIGN, book_id)
        raise CodeExists(
            f"{overlap['foreign_']} code(s) already belong to another book; nothing stored.",
            codes=[dict(r) for r in rows],
        )
    inserted, raced = await _insert(conn, book_id, skip_present=bool(overlap["present"]))
    if raced:
        # A concurrent import or generation stored some of these codes after the check
        # above. Those of this book count as already present; any of another book refuse
        # the whole file, as if they had been there from the start.
        overlap = await conn.fetchrow(_OVERLAP, book_id)
        assert overlap is not None
        if overlap["foreign_"]:
            rows = await conn.fetch(_FOREIGN, book_id)
            raise CodeExists(
                f"{overlap['foreign_']} code(s) were added to another book meanwhile;"
                " nothing stored.",
                codes=[dict(r) for r in rows],
            )
    out = ImportOut(
        received=int(totals["received"]),
        inserted=inserted,
        duplicates_in_file=int(totals["received"] - totals["distinct_"]),
        already_present=int(totals["distinct_"]) - inserted,
    )
    await conn.execute(
        _RECORD,
        book_id,
        actor_id,
        out.received,
        out.inserted,
        out.duplicates_in_file,
        out.already_present,
        feed.sha256.hexdigest(),
    )
    await conn.execute("DROP TABLE import_lines, import_codes")
    return out


async def _insert(
    conn: asyncpg.Connection, book_id: uuid.UUID, *, skip_present: bool
) -> tuple[int, bool]:
    """Insert the staged codes; returns (rows inserted, whether a concurrent writer stored
    some of them first). The fast plain INSERT runs in a savepoint: when it meets a code
    committed meanwhile (it waits for the other transaction first), it is undone and the
    insert runs again skipping what exists."""
    await conn.execute("SAVEPOINT import_insert")
    try:
        status = await conn.execute(_INSERT_NEW if skip_present else _INSERT_ALL, book_id)
    except asyncpg.UniqueViolationError:
        await conn.execute("ROLLBACK TO SAVEPOINT import_insert")
        status = await conn.execute(_INSERT_SKIPPING, book_id)
        return int(status.rsplit(" ", 1)[-1]), True
    await conn.execute("RELEASE SAVEPOINT import_insert")
    return int(status.rsplit(" ", 1)[-1]), False


async def _upload_chunks(upload: UploadFile) -> AsyncIterator[bytes]:
    while chunk := await upload.read(1 << 20):
        yield chunk


@asynccontextmanager
async def upload_chunks(request: Request) -> AsyncIterator[AsyncIterable[bytes]]:
    """The uploaded file as byte chunks: a CSV body, or the `file` field of a multipart form;
    415 for anything else."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type in CSV_TYPES:
        yield request.stream()
        return
    if media_type != "multipart/form-data":
        raise UnsupportedMediaType(
            "Send the codes as text/csv, or as multipart/form-data with a `file` field."
        )
    async with request.form(max_files=1, max_fields=5) as form:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise ValidationFailed(
                "The multipart form needs a `file` field.",
                errors=[{"loc": ["body", "file"], "msg": "Field required"}],
            )
        yield _upload_chunks(upload)


async def import_request(
    session: AsyncSession,
    request: Request,
    book_id: uuid.UUID,
    actor_id: uuid.UUID,
    idem: Idempotency,
) -> ImportOut:
    """The HTTP upload: a CSV body or a multipart form with a `file` field."""
    async with upload_chunks(request) as chunks:
        return await import_chunks(session, book_id, actor_id, chunks, idem)
