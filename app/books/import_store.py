"""The storing step of an import job, in the job's work transaction: a staged CSV
(validated, de-duplicated, checked against other books, inserted in batches in code order)
or a generation's drawn codes. A refusal raises `Failed`, a cancel or a stop `Stop`."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import asyncpg
import orjson

from app.books import checksum, generate
from app.books.import_jobs import FOREIGN_REASON
from app.books.import_schemas import JobState
from app.books.import_side import Conn, Failed, Outcome, Side, Stop, Totals
from app.books.imports import DATA_LINE, INVALID_SELECT, INVALID_TEST, MAX_REPORTED, TRIMMED
from app.books.schemas import GenerateIn
from app.core.problems import ProblemError

# One pass over the staging table: its rows (a database crash empties an unlogged table)
# and its invalid data lines (which are listed only when there are any).
_SCAN = f"""
SELECT count(*) AS stored, count(*) FILTER (WHERE data) AS received,
       count(*) FILTER (WHERE data AND {INVALID_TEST}) AS invalid
FROM (SELECT {DATA_LINE} AS data, {TRIMMED} AS t FROM {{staging}}) AS s
"""

# The file's distinct codes with their first line and how many lines carry them; a unique
# index orders the batches by code, so concurrent writers meet common codes in one order.
# The grouping sorts under "C" (byte order, with abbreviated keys: about a third faster on
# ten million codes than the database's libc collation); the column keeps the database's
# collation, so the index, the batches and the joins with `codes` use its order as before.
_DISTINCT = """
CREATE TEMP TABLE job_codes ON COMMIT DROP AS
SELECT code COLLATE "default" AS code, line, n FROM (
    SELECT upper({trimmed}) COLLATE "C" AS code, min(line) AS line, count(*) AS n
    FROM {staging} WHERE {data_line}
    GROUP BY 1 ORDER BY 1
) AS d
"""

_OVERLAP = """
SELECT count(*) FILTER (WHERE c.book_id = $1) AS present,
       coalesce(sum(i.n) FILTER (WHERE c.book_id <> $1), 0) AS foreign_lines
FROM job_codes i JOIN codes c ON c.code = i.code
"""

_FOREIGN = f"""
SELECT i.line, i.code, '{FOREIGN_REASON}' AS reason FROM job_codes i JOIN codes c ON c.code = i.code
WHERE c.book_id <> $1 ORDER BY i.line LIMIT {MAX_REPORTED}
"""

_BATCH = """
WITH b AS MATERIALIZED (
    SELECT code, n FROM job_codes WHERE code > $2 ORDER BY code LIMIT $3
), ins AS (
    INSERT INTO codes (book_id, code) SELECT $1, code FROM b ORDER BY code {conflict}
    RETURNING 1
)
SELECT (SELECT max(code) FROM b) AS last, (SELECT count(*) FROM b) AS taken,
       (SELECT coalesce(sum(n), 0) FROM b) AS lines, (SELECT count(*) FROM ins) AS inserted
"""
_BATCH_PLAIN = _BATCH.format(conflict="")
_BATCH_SKIPPING = _BATCH.format(conflict="ON CONFLICT (code) DO NOTHING")


async def store_csv(
    work: Conn, side: Side, job: asyncpg.Record, batch_size: int, stopping: Callable[[], bool]
) -> Totals:
    staging, book_id = job["staging"], job["book_id"]
    if staging is None or not await work.fetchval("SELECT to_regclass($1) IS NOT NULL", staging):
        raise Failed("The uploaded file is no longer stored; upload it again.")
    scan = await work.fetchrow(_SCAN.format(staging=staging))
    assert scan is not None
    if scan["stored"] != job["lines_total"]:
        # An unlogged table is emptied by a database crash: the upload is gone.
        raise Failed("The uploaded file was lost by a database restart; upload it again.")
    if scan["invalid"]:
        total = int(scan["invalid"])
        invalid = await work.fetch(
            f"{INVALID_SELECT.format(table=staging)} ORDER BY line LIMIT {MAX_REPORTED}"
        )
        raise Failed(
            f"{total} invalid line(s), the first at line {invalid[0]['line']}; nothing stored.",
            [{k: r[k] for k in ("line", "code", "reason")} for r in invalid],
            total,
            "invalid",
        )
    await work.execute("DROP TABLE IF EXISTS pg_temp.job_codes")
    status = await work.execute(
        _DISTINCT.format(trimmed=TRIMMED, staging=staging, data_line=DATA_LINE)
    )
    received, distinct = int(scan["received"]), int(status.rsplit(" ", 1)[-1])
    await work.execute("CREATE UNIQUE INDEX ON job_codes (code)")
    await work.execute("ANALYZE job_codes")
    if await checksum.any_claimed(work):
        # Codes under a claimed checksum prefix must pass its check, as in the upload route.
        unchecked = await work.fetch(
            f"SELECT line, code FROM job_codes WHERE {checksum.unchecked_in_namespace('code')}"
            f" ORDER BY line LIMIT {MAX_REPORTED}"
        )
        if unchecked:
            raise Failed(
                "Codes under a checksum prefix have a wrong check character (first at line"
                f" {unchecked[0]['line']}); nothing stored.",
                [
                    {"line": r["line"], "code": r["code"], "reason": "wrong check character"}
                    for r in unchecked
                ],
                len(unchecked),
                "invalid",
            )
    present = await _check_foreign(work, book_id)
    await side.enter(JobState.inserting)
    last, lines, inserted, raced = "", 0, 0, False
    while True:
        if stopping():
            raise Stop(Outcome.RELEASED, "worker stopping")
        row, raced = await _batch(work, book_id, last, batch_size, skipping=raced or present > 0)
        if row["taken"] == 0:
            break
        last = row["last"]
        lines += int(row["lines"])
        inserted += int(row["inserted"])
        await side.progress(lines, inserted)
        if row["taken"] < batch_size:
            break
    if inserted + present < distinct:
        # Codes another writer stored meanwhile were skipped: those of another book refuse
        # the file, as if they had been there from the start.
        await _check_foreign(work, book_id)
    return Totals(received, inserted, received - distinct, distinct - inserted)


async def _check_foreign(work: Conn, book_id: uuid.UUID) -> int:
    """Codes of the file this book already holds; codes of another book fail the job."""
    overlap = await work.fetchrow(_OVERLAP, book_id)
    assert overlap is not None
    if overlap["foreign_lines"]:
        rows = await work.fetch(_FOREIGN, book_id)
        count = int(overlap["foreign_lines"])
        raise Failed(
            f"{count} line(s) hold codes of another book; nothing stored.",
            [dict(r) for r in rows],
            count,
            "foreign",
        )
    return int(overlap["present"])


async def _batch(
    work: Conn, book_id: uuid.UUID, last: str, size: int, *, skipping: bool
) -> tuple[asyncpg.Record, bool]:
    """One batch of inserts; returns it and whether later batches must skip existing codes.
    The plain insert runs in a savepoint: when it meets a code another writer committed
    meanwhile, it is undone and runs again skipping what exists."""
    if not skipping:
        try:
            async with work.transaction():
                row = await work.fetchrow(_BATCH_PLAIN, book_id, last, size)
            assert row is not None
            return row, False
        except asyncpg.UniqueViolationError:
            pass
    row = await work.fetchrow(_BATCH_SKIPPING, book_id, last, size)
    assert row is not None
    return row, True


# --- generation ---------------------------------------------------------------------------


async def store_generated(
    work: Conn, side: Side, job: asyncpg.Record, stopping: Callable[[], bool]
) -> Totals:
    params = job["params"]
    body = GenerateIn.model_validate(orjson.loads(params) if isinstance(params, str) else params)
    try:
        slots = generate.checked_slots(body)
    except ProblemError as exc:
        raise Failed(exc.detail) from exc
    await side.enter(JobState.inserting)

    async def after_round(inserted: int) -> None:
        if stopping():
            raise Stop(Outcome.RELEASED, "worker stopping")
        await side.progress(inserted, inserted)

    try:
        inserted = await generate.generate_into(
            work, job["book_id"], slots, body.count, after_round
        )
    except ProblemError as exc:
        raise Failed(exc.detail) from exc
    return Totals(inserted, inserted, 0, 0)
