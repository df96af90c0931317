"""HTTP routes on lists of codes and the redemption history."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query

from app.api.deps import AdminUser, CurrentUser, Session
from app.books import history, mine
from app.books.schemas import Action, CodeStatus, HistoryEntry, MyBookOut, MyCodeOut
from app.books.types import Timestamp
from app.core.openapi import AUTH, problems
from app.core.pagination import Cursor, Limit, Page, encode_cursor, int_cursor

router = APIRouter(tags=["codes"])


@router.get("/me/books", response_model=list[MyBookOut], responses=problems(*AUTH), tags=["me"])
async def my_books(
    user: CurrentUser,
    session: Session,
    limit: Annotated[int, Query(ge=1, le=500, description="At most this many (1..500).")] = 100,
) -> list[MyBookOut]:
    """Books the caller may claim from now (active and inside their window), by name, with
    how many of their codes the caller `held` and how many more they `may_claim` (the
    per-user limit left, at most the free codes; 0 when none)."""
    return await mine.my_books(session, user.id, limit)


@router.get("/me/codes", response_model=Page[MyCodeOut], responses=problems(*AUTH), tags=["me"])
async def my_codes(
    user: CurrentUser,
    session: Session,
    book_id: uuid.UUID | None = None,
    status_: Annotated[CodeStatus | None, Query(alias="status")] = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Page[MyCodeOut]:
    """The caller's codes, optionally of one book and in one status, each with its book's
    `book_name`, `book_description`, `book_expires_at`, `book_status` and `book_active`
    (whether the book hands out and redeems codes now)."""
    rows = await mine.my_codes(
        session,
        user_id=user.id,
        book_id=book_id,
        status=status_,
        limit=limit + 1,
        after=int_cursor(cursor),
    )
    page = rows[:limit]
    return Page[MyCodeOut](
        items=[c for _, c in page],
        next_cursor=encode_cursor(page[-1][0]) if len(rows) > limit else None,
    )


def _history_page(entries: list[HistoryEntry], limit: int) -> Page[HistoryEntry]:
    page = entries[:limit]
    return Page[HistoryEntry](
        items=page, next_cursor=encode_cursor(page[-1].id) if len(entries) > limit else None
    )


@router.get(
    "/history", response_model=Page[HistoryEntry], responses=problems(*AUTH, 403), tags=["history"]
)
async def list_history(
    admin: AdminUser,
    session: Session,
    book_id: uuid.UUID | None = None,
    code: Annotated[str | None, Query(max_length=64, pattern=r"^[A-Za-z0-9_-]+$")] = None,
    user_id: uuid.UUID | None = None,
    action: Action | None = None,
    since: Annotated[Timestamp | None, Query()] = None,
    until: Annotated[Timestamp | None, Query()] = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Page[HistoryEntry]:
    """Every transition, newest first: assigned, locked, unlocked, redeemed, rolled_back."""
    filters = history.HistoryFilter(book_id, code, user_id, action, since, until)
    entries = await history.list_history(session, filters, limit + 1, int_cursor(cursor))
    return _history_page(entries, limit)


@router.get(
    "/me/history", response_model=Page[HistoryEntry], responses=problems(*AUTH), tags=["me"]
)
async def my_history(
    user: CurrentUser,
    session: Session,
    book_id: uuid.UUID | None = None,
    action: Action | None = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Page[HistoryEntry]:
    """The caller's own history, newest first."""
    filters = history.HistoryFilter(book_id=book_id, user_id=user.id, action=action)
    entries = await history.list_history(session, filters, limit + 1, int_cursor(cursor))
    return _history_page(entries, limit)
