"""Keyset pagination: `?limit=` (1..500) and an opaque `?cursor=`."""

from __future__ import annotations

import base64
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
