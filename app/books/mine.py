"""What a user sees of books: the books they may claim from now, and their codes with the
context of each code's book (name, description, expiry, whether it is usable now)."""

from __future__ import annotations

import uuid

from sqlalchemy.ext.asyncio import AsyncSession

from app.books import rules
from app.books.schemas import CodeStatus, MyBookOut, MyCodeOut
from app.books.service import code_as, codes_sql
from app.core.db import raw_connection

# Free codes come from the kept counts (`book_code_counts`), never a count of the book.
MY_BOOKS_SQL = f"""
SELECT b.id, b.name, b.description, b.expires_at, h.held,
       least(
           coalesce(b.max_codes_per_user - h.held, f.unassigned),
           f.unassigned
       ) AS may_claim
FROM books b
CROSS JOIN LATERAL (
    SELECT count(*) AS held FROM codes c WHERE c.user_id = $1 AND c.book_id = b.id
) AS h
CROSS JOIN LATERAL (
    SELECT coalesce(sum(unassigned), 0)::bigint AS unassigned
    FROM book_code_counts WHERE book_id = b.id
) AS f
WHERE {rules.BOOK_ACTIVE}
ORDER BY lower(b.name), b.id
LIMIT $2
"""

BOOK_CONTEXT = f""",
    b.name AS book_name, b.description AS book_description, b.expires_at AS book_expires_at,
    b.status AS book_status, {rules.BOOK_ACTIVE} AS book_active"""


async def my_books(session: AsyncSession, user_id: uuid.UUID, limit: int) -> list[MyBookOut]:
    """Active books (in their window), by name, with the caller's held and claimable counts."""
    conn = await raw_connection(session)
    rows = await conn.fetch(MY_BOOKS_SQL, user_id, limit)
    return [
        MyBookOut.model_validate({**dict(r), "may_claim": max(int(r["may_claim"]), 0)})
        for r in rows
    ]


async def my_codes(
    session: AsyncSession,
    *,
    user_id: uuid.UUID,
    book_id: uuid.UUID | None,
    status: CodeStatus | None,
    limit: int,
    after: int | None,
) -> list[tuple[int, MyCodeOut]]:
    """A keyset page of the caller's codes by id, each with its book's context."""
    conn = await raw_connection(session)
    sql = codes_sql(user=True, status=status, extra_columns=BOOK_CONTEXT)
    rows = await conn.fetch(sql, book_id, user_id, after, limit)
    return [(r["id"], code_as(MyCodeOut, r)) for r in rows]
