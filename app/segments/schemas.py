"""Request and response bodies of the segment routes."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Self

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

Name = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"^[^\x00]*$")]
Tag = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[^\x00]*$")]


class SegmentKind(StrEnum):
    static = "static"
    rule = "rule"


class Rules(BaseModel):
    """Criteria a user must all meet (AND) to be in a rule segment."""

    model_config = ConfigDict(extra="forbid", strict=True)

    tags_any: list[Tag] | None = Field(default=None, min_length=1, max_length=100)
    age_min: int | None = Field(default=None, ge=0, le=150)
    age_max: int | None = Field(default=None, ge=0, le=150)
    purchased_within_days: int | None = Field(default=None, ge=1, le=3650)

    @model_validator(mode="after")
    def _ordered_ages(self) -> Self:
        if self.age_min is not None and self.age_max is not None and self.age_min > self.age_max:
            raise ValueError("age_min must not exceed age_max")
        return self

    def as_json(self) -> dict[str, object]:
        return self.model_dump(exclude_none=True)


class SegmentIn(BaseModel):
    """A `rule` segment needs at least one rule; a `static` one takes no rules (else 422)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "name": "VIP adults",
                    "kind": "rule",
                    "rules": {"tags_any": ["vip"], "age_min": 18},
                },
                {"name": "Beta testers", "kind": "static"},
            ]
        },
    )

    name: Name
    kind: SegmentKind
    rules: Rules | None = None

    @model_validator(mode="after")
    def _rules_match_kind(self) -> Self:
        if self.kind is SegmentKind.rule and (self.rules is None or not self.rules.as_json()):
            raise ValueError("a rule segment needs at least one rule")
        if self.kind is SegmentKind.static and self.rules is not None and self.rules.as_json():
            raise ValueError("a static segment has members, not rules")
        return self


class SegmentPatch(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"name": "VIP", "rules": {"age_min": 21}}]}
    )

    name: Name | None = None
    rules: Rules | None = None


class SegmentOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    kind: SegmentKind
    rules: dict[str, object]
    created_at: datetime


class MembersIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"user_ids": ["3fa85f64-5717-4562-b3fc-2c963f66afa6"]}]},
    )

    user_ids: list[uuid.UUID] = Field(min_length=1, max_length=10_000)


class MembersAdded(BaseModel):
    added: int


class MemberOut(BaseModel):
    user_id: uuid.UUID
    email: str
