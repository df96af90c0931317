"""The two ORM reads every admin resource needs: one row by id (else 404), and a keyset
page in id order."""

from __future__ import annotations

import uuid
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.models import Base
from app.core.problems import NotFound

M = TypeVar("M", bound=Base)


async def get_or_404(session: AsyncSession, model: type[M], row_id: uuid.UUID, what: str) -> M:
    row = await session.get(model, row_id)
    if row is None:
        raise NotFound(f"No {what} {row_id}.")
    return row


async def page_by_id(
    session: AsyncSession,
    model: type[M],
    limit: int,
    after: uuid.UUID | None,
    *where: ColumnElement[bool],
) -> list[M]:
    """Rows of `model` in id order after `after`, `limit` of them, filtered by `where`."""
    id_column: Any = model.id  # type: ignore[attr-defined]
    stmt = select(model).where(*where).order_by(id_column).limit(limit)
    if after is not None:
        stmt = stmt.where(id_column > after)
    return list((await session.execute(stmt)).scalars())
