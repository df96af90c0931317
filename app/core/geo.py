"""Coordinates as the API accepts them: finite, in range, rounded to 7 decimals (~1 cm).

Rounding also turns subnormal values such as 5e-324 into 0, which `ll_to_earth()` (used by
the GiST indexes on stores and users) would otherwise reject with an underflow.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, Field


def _round(value: float) -> float:
    return round(value, 7) + 0.0  # + 0.0 turns -0.0 into 0.0


Lat = Annotated[
    float, Field(ge=-90, le=90, allow_inf_nan=False, strict=True), AfterValidator(_round)
]
Lng = Annotated[
    float, Field(ge=-180, le=180, allow_inf_nan=False, strict=True), AfterValidator(_round)
]
