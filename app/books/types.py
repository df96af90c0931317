"""Field types shared by the books schemas: text and JSON PostgreSQL can store, strict
integers, aware timestamps."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import AfterValidator, AwareDatetime, Field, StringConstraints

from app.books.rules import LOCK_TTL_MAX_SECONDS

MAX_INT = 1_000_000_000


def storable(value: str) -> str:
    """Text PostgreSQL can store: no NUL, no lone surrogates (JSON lets both through)."""
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError("must be valid Unicode (no lone surrogates)") from exc
    return value


def _clean_json(value: Any, depth: int = 0) -> Any:
    """JSON PostgreSQL can store: storable text, finite numbers within 64 bits, bounded
    depth."""
    if depth > 20:
        raise ValueError("nested too deeply (max 20 levels)")
    if isinstance(value, str):
        storable(value)
    elif isinstance(value, bool):
        pass
    elif isinstance(value, int):
        if not -(2**63) <= value < 2**63:
            raise ValueError("integers must fit in 64 bits")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("must not contain NaN or Infinity")
    elif isinstance(value, dict):
        for key, item in value.items():
            _clean_json(key, depth + 1)
            _clean_json(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _clean_json(item, depth + 1)
    return value


def _utc(value: datetime) -> datetime:
    try:
        value = value.astimezone(UTC)
    except OverflowError as exc:
        raise ValueError("must be between 1970 and 9998") from exc
    if not 1970 <= value.year <= 9998:
        raise ValueError("must be between 1970 and 9998")
    return value


Metadata = Annotated[dict[str, Any], AfterValidator(_clean_json)]
Text = Annotated[str, StringConstraints(max_length=2000), AfterValidator(storable)]
Name = Annotated[str, StringConstraints(min_length=1, max_length=200), AfterValidator(storable)]
Timestamp = Annotated[AwareDatetime, AfterValidator(_utc)]
PositiveInt = Annotated[int, Field(strict=True, ge=1, le=MAX_INT)]
LockTtl = Annotated[int, Field(strict=True, ge=1, le=LOCK_TTL_MAX_SECONDS)]
