"""Keyset cursors of the promos domain's lists."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from app.core.pagination import bad_cursor, decode_cursor, encode_cursor


def time_id_cursor(cursor: str | None) -> tuple[datetime, uuid.UUID] | None:
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


def page_by_id(items: list[Any], limit: int) -> tuple[list[Any], str | None]:
    page = items[:limit]
    return page, (encode_cursor(page[-1].id) if len(items) > limit else None)
