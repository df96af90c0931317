"""Books (CRUD, live stats) and reading codes. Codes change state in `assign.py`,
`redeem.py`, `imports.py` and `generate.py`; how a code reads is `rules.py`."""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, TypeVar

import asyncpg
from sqlalchemy import select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession

from app.books import rules
from app.books.models import Book
from app.books.schemas import BookIn, BookOut, BookPatch, BookStatus, CodeOut, CodeStatus, Stats
from app.core.crud import get_or_404
from app.core.db import raw_connection
from app.core.problems import NotFound, ValidationFailed

# How a code reads: a lapsed lock is no lock (lazy expiry, no sweeper).
CODE_COLUMNS = f"""
    c.code, c.book_id, {rules.STATUS} AS status,
    c.user_id, c.assigned_at, {rules.LOCKED_UNTIL} AS locked_until,
    c.redemptions,
    greatest(b.max_redemptions_per_code - c.redemptions, 0) AS redemptions_left
"""

STATUS_FILTER = {
    CodeStatus.unassigned: "c.status = 'unassigned'",
    CodeStatus.assigned: rules.READS_ASSIGNED,
    CodeStatus.locked: rules.LOCK_LIVE,
    CodeStatus.redeemed: "c.status = 'redeemed'",
}

_CODE_RE = re.compile(rf"[A-Za-z0-9_-]{{1,{rules.CODE_MAX_LENGTH}}}")


def normalize_code(raw: str) -> str:
    """Codes are case-insensitive and stored upper-case; anything else cannot exist."""
    if not _CODE_RE.fullmatch(raw):
        raise NotFound(f"No code {raw[: rules.CODE_MAX_LENGTH]!r}.")
    return raw.upper()


Out = TypeVar("Out", bound=CodeOut)


def code_as(model: type[Out], record: asyncpg.Record | Mapping[str, Any]) -> Out:
    """A code answer of `model` (`CodeOut` or a subclass such as `LockedCodeOut`) from a row."""
    return model.model_validate({key: record[key] for key in model.model_fields if key in record})


def code_out(record: asyncpg.Record | Mapping[str, Any]) -> CodeOut:
    return code_as(CodeOut, record)


# --- books -------------------------------------------------------------------------------

# Counts kept by the statements that change codes (`book_code_counts`, one to 16 slot rows
# a book, summed), never a count of the book. A lapsed lock is still `held` in them and reads
# as assigned: live locks are counted here, through the partial index of locks by expiry,
# which skips the lapsed ones. Both parts read the same snapshot.
_STATS_SQL = f"""
SELECT b.id AS book_id,
       k.unassigned + k.held + k.redeemed AS total,
       k.unassigned, k.held - l.locked AS assigned, l.locked, k.redeemed
FROM unnest($1::uuid[]) AS b(id)
CROSS JOIN LATERAL (
    SELECT coalesce(sum(unassigned), 0)::bigint AS unassigned,
           coalesce(sum(held), 0)::bigint AS held, coalesce(sum(redeemed), 0)::bigint AS redeemed
    FROM book_code_counts WHERE book_id = b.id
) AS k
CROSS JOIN LATERAL (
    SELECT count(*) AS locked FROM codes c
    WHERE c.book_id = b.id AND {rules.LOCK_LIVE}
) AS l
"""


async def stats_for(session: AsyncSession, book_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, Stats]:
    """Codes by read status for each book (a lapsed lock counts as assigned); zeros for none."""
    if not book_ids:
        return {}
    conn = await raw_connection(session)
    rows = await conn.fetch(_STATS_SQL, list(book_ids))
    found = {r["book_id"]: Stats(**{k: r[k] for k in Stats.model_fields}) for r in rows}
    return {book_id: found.get(book_id, Stats()) for book_id in book_ids}


def book_out(book: Book, stats: Stats) -> BookOut:
    return BookOut(
        id=book.id,
        name=book.name,
        description=book.description,
        status=BookStatus(book.status),
        max_codes_per_user=book.max_codes_per_user,
        max_redemptions_per_code=book.max_redemptions_per_code,
        max_redemptions_per_user=book.max_redemptions_per_user,
        lock_ttl_seconds=book.lock_ttl_seconds,
        starts_at=book.starts_at,
        expires_at=book.expires_at,
        metadata=book.metadata_,
        checksum=book.checksum,
        created_at=book.created_at,
        stats=stats,
    )


async def create_book(session: AsyncSession, data: BookIn) -> Book:
    """Insert a book with its settings."""
    values = data.model_dump(exclude={"metadata"})
    book = Book(**values, metadata_=data.metadata)
    session.add(book)
    await session.flush()
    await session.refresh(book)
    return book


async def get_book(session: AsyncSession, book_id: uuid.UUID) -> Book:
    return await get_or_404(session, Book, book_id, "book")


async def list_books(
    session: AsyncSession, limit: int, after: tuple[datetime, uuid.UUID] | None
) -> list[Book]:
    query = select(Book).order_by(Book.created_at, Book.id).limit(limit)
    if after is not None:
        query = query.where(tuple_(Book.created_at, Book.id) > tuple_(*after))
    return list((await session.scalars(query)).all())


async def update_book(session: AsyncSession, book_id: uuid.UUID, patch: BookPatch) -> Book:
    """Apply the fields present in the patch; the window is checked as a whole."""
    book = await get_book(session, book_id)
    for field in patch.model_fields_set:
        value = getattr(patch, field)
        if field == "metadata":
            # The column is a JSON object; `null` empties it (JSONB would store a JSON null).
            book.metadata_ = value if value is not None else {}
        else:
            setattr(book, field, value)
    if (
        book.starts_at is not None
        and book.expires_at is not None
        and book.starts_at >= book.expires_at
    ):
        raise ValidationFailed(
            "starts_at must be before expires_at.",
            errors=[{"loc": ["body", "starts_at"], "msg": "must be before expires_at"}],
        )
    await session.flush()
    await session.refresh(book)
    return book


# --- reading codes ------------------------------------------------------------------------

_GET_CODE = f"""
SELECT {CODE_COLUMNS} FROM codes c JOIN books b ON b.id = c.book_id
WHERE c.code = $1 AND ($2::uuid IS NULL OR c.user_id = $2)
"""


async def get_code(conn: asyncpg.Connection, code: str, owner: uuid.UUID | None) -> CodeOut:
    """One code; `owner` restricts to that holder (others' codes answer 404)."""
    row = await conn.fetchrow(_GET_CODE, normalize_code(code), owner)
    if row is None:
        raise NotFound(f"No code {code.upper()}.")
    return code_out(row)


def codes_sql(*, user: bool, status: CodeStatus | None, extra_columns: str = "") -> str:
    """The page query of `list_codes`: $1 book, $2 holder, $3 cursor (last id), $4 limit;
    `extra_columns` (starting with a comma) may add columns of the code `c` or book `b`."""
    where = ["($1::uuid IS NULL OR c.book_id = $1)", "($2::uuid IS NULL OR c.user_id = $2)"]
    if user:
        where.append("c.user_id IS NOT NULL")
    if status is not None:
        where.append(STATUS_FILTER[status])
    where.append("($3::bigint IS NULL OR c.id > $3)")
    return (
        f"SELECT c.id, {CODE_COLUMNS}{extra_columns} FROM codes c JOIN books b ON b.id = c.book_id"
        f" WHERE {' AND '.join(where)} ORDER BY c.id LIMIT $4"
    )


async def list_codes(
    session: AsyncSession,
    *,
    book_id: uuid.UUID | None,
    user_id: uuid.UUID | None,
    status: CodeStatus | None,
    limit: int,
    after: int | None,
) -> list[tuple[int, CodeOut]]:
    """A keyset page of codes by id, filtered by book, holder and (read) status."""
    conn = await raw_connection(session)
    rows = await conn.fetch(
        codes_sql(user=user_id is not None, status=status),
        book_id,
        user_id,
        after,
        limit,
    )
    return [(r["id"], code_out(r)) for r in rows]
