"""Keyset pagination: `?limit=` (1..500) and an opaque `?cursor=`."""

from __future__ import annotations

import base64
import uuid
from datetime import datetime
from typing import Annotated, Any, Generic, TypeVar

import orjson
from fastapi import Query
from pydantic import BaseModel

from app.core.problems import ValidationFailed

Limit = Annotated[int, Query(ge=1, le=500, description="Page size (1..500).")]
Cursor = Annotated[
    str | None, Query(max_length=512, description="Opaque cursor from `next_cursor`.")
]


T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None = None


def encode_cursor(*values: Any) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(list(values), default=str)).decode().rstrip("=")


def decode_cursor(cursor: str | None, arity: int) -> list[Any] | None:
    """The values of a cursor, or None for the first page; a bad cursor is 422."""
    if cursor is None:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        values = orjson.loads(raw)
    except (ValueError, orjson.JSONDecodeError) as exc:
        raise ValidationFailed(
            "The cursor is not valid.", errors=[{"loc": ["query", "cursor"], "msg": "invalid"}]
        ) from exc
    if not isinstance(values, list) or len(values) != arity:
        raise ValidationFailed(
            "The cursor is not valid.", errors=[{"loc": ["query", "cursor"], "msg": "invalid"}]
        )
    return values


_BIGINT_MAX = 2**63 - 1


def bad_cursor() -> ValidationFailed:
    return ValidationFailed(
        "The cursor is not valid.", errors=[{"loc": ["query", "cursor"], "msg": "invalid"}]
    )


def uuid_cursor(cursor: str | None) -> uuid.UUID | None:
    """The id after which a page keyed by a UUID continues; None for the first page."""
    values = decode_cursor(cursor, 1)
    if values is None:
        return None
    try:
        return uuid.UUID(str(values[0]))
    except ValueError as exc:
        raise bad_cursor() from exc


def int_cursor(cursor: str | None) -> int | None:
    """The bigint id after which a page continues; None for the first page."""
    values = decode_cursor(cursor, 1)
    if values is None:
        return None
    if type(values[0]) is not int or not 0 <= values[0] <= _BIGINT_MAX:
        raise bad_cursor()
    return values[0]


def time_id_cursor(cursor: str | None) -> tuple[datetime, uuid.UUID] | None:
    """The (timestamp, id) after which a page in time order continues; None for the first."""
    values = decode_cursor(cursor, 2)
    if values is None:
        return None
    try:
        at = datetime.fromisoformat(str(values[0]))
        if at.tzinfo is None:
            raise ValueError("naive")
        return at, uuid.UUID(str(values[1]))
    except ValueError as exc:
        raise bad_cursor() from exc
