"""Keyset cursors of the promos domain's lists."""

from __future__ import annotations

from typing import Any

from app.core.pagination import encode_cursor


def page_by_id(items: list[Any], limit: int) -> tuple[list[Any], str | None]:
    page = items[:limit]
    return page, (encode_cursor(page[-1].id) if len(items) > limit else None)
