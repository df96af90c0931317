"""Request and response bodies of books, codes and history."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, ClassVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    StrictBool,
    StringConstraints,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

from app.books.rules import CODE_MAX_LENGTH
from app.books.types import (
    LockTtl,
    Metadata,
    Name,
    PositiveInt,
    Text,
    Timestamp,
    storable,
)
from app.core.openapi import without_null
from app.core.report import Bucket


class BookStatus(StrEnum):
    active = "active"
    paused = "paused"
    archived = "archived"


class CodeStatus(StrEnum):
    unassigned = "unassigned"
    assigned = "assigned"
    locked = "locked"
    redeemed = "redeemed"


class Action(StrEnum):
    assigned = "assigned"
    locked = "locked"
    unlocked = "unlocked"
    redeemed = "redeemed"
    rolled_back = "rolled_back"


class Stats(BaseModel):
    total: int = 0
    unassigned: int = 0
    assigned: int = 0
    locked: int = 0
    redeemed: int = 0


_BOOK_EXAMPLE: dict[str, Any] = {
    "name": "Summer 2026",
    "description": "10% off in July",
    "max_codes_per_user": 1,
    "max_redemptions_per_code": 1,
    "max_redemptions_per_user": None,
    "lock_ttl_seconds": 300,
    "starts_at": "2026-07-01T00:00:00Z",
    "expires_at": "2026-08-01T00:00:00Z",
    "metadata": {"campaign": "summer"},
}


def _check_window(starts_at: datetime | None, expires_at: datetime | None) -> None:
    if starts_at is not None and expires_at is not None and starts_at >= expires_at:
        raise ValueError("starts_at must be before expires_at")


class BookIn(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [_BOOK_EXAMPLE]})

    name: Name
    description: Text | None = None
    max_codes_per_user: PositiveInt | None = 1
    max_redemptions_per_code: PositiveInt = 1
    max_redemptions_per_user: PositiveInt | None = None
    lock_ttl_seconds: LockTtl = 300
    starts_at: Timestamp | None = None
    expires_at: Timestamp | None = None
    metadata: Metadata = Field(default_factory=dict)
    # Generated codes end in a check character unless a generate says `checksum: false`.
    checksum: StrictBool = False

    @model_validator(mode="after")
    def _window(self) -> BookIn:
        _check_window(self.starts_at, self.expires_at)
        return self


class BookPatch(BaseModel):
    """Any field of a book, plus its status; absent fields are unchanged."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"status": "paused"}]}
    )

    name: Name | None = None
    description: Text | None = None
    status: BookStatus | None = None
    max_codes_per_user: PositiveInt | None = None
    max_redemptions_per_code: PositiveInt | None = None
    max_redemptions_per_user: PositiveInt | None = None
    lock_ttl_seconds: LockTtl | None = None
    starts_at: Timestamp | None = None
    expires_at: Timestamp | None = None
    metadata: Metadata | None = None
    checksum: StrictBool | None = None

    _NOT_NULL: ClassVar[tuple[str, ...]] = (
        "name",
        "status",
        "max_redemptions_per_code",
        "lock_ttl_seconds",
        "checksum",
    )

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        schema = handler.resolve_ref_schema(handler(core_schema))
        without_null(schema, cls._NOT_NULL)
        return schema

    @model_validator(mode="after")
    def _not_null(self) -> BookPatch:
        for field in self._NOT_NULL:
            if field in self.model_fields_set and getattr(self, field) is None:
                raise ValueError(f"{field} cannot be null")
        _check_window(self.starts_at, self.expires_at)
        return self


class BookOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    **_BOOK_EXAMPLE,
                    "id": "3f1c2a4e-8d7b-4f0e-9c61-2b5a7e9d1c40",
                    "status": "active",
                    "created_at": "2026-06-20T10:00:00Z",
                    "stats": {
                        "total": 1000,
                        "unassigned": 900,
                        "assigned": 80,
                        "locked": 5,
                        "redeemed": 15,
                    },
                }
            ]
        }
    )

    id: uuid.UUID
    name: str
    description: str | None = None
    status: BookStatus
    max_codes_per_user: int | None
    max_redemptions_per_code: int
    max_redemptions_per_user: int | None
    lock_ttl_seconds: int
    starts_at: datetime | None
    expires_at: datetime | None
    metadata: dict[str, Any]
    checksum: bool = False
    created_at: datetime
    stats: Stats


_CODE_EXAMPLE: dict[str, Any] = {
    "code": "SUMMER-2345-ABCD",
    "book_id": "3f1c2a4e-8d7b-4f0e-9c61-2b5a7e9d1c40",
    "status": "assigned",
    "user_id": "8a6e0804-2bd0-4672-b79d-d97027f9071a",
    "assigned_at": "2026-07-02T09:30:00Z",
    "locked_until": None,
    "redemptions": 0,
    "redemptions_left": 1,
}


class CodeOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [_CODE_EXAMPLE]})

    code: str
    book_id: uuid.UUID
    status: CodeStatus
    user_id: uuid.UUID | None
    assigned_at: datetime | None
    locked_until: datetime | None
    redemptions: int
    redemptions_left: int


class LockedCodeOut(CodeOut):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    **_CODE_EXAMPLE,
                    "status": "locked",
                    "locked_until": "2026-07-02T09:35:00Z",
                    "lock_id": "f0b7d0a2-7e39-4f7a-9a55-0c2f3b1e6d11",
                }
            ]
        }
    )

    lock_id: uuid.UUID


class MyCodeOut(CodeOut):
    """One of the caller's codes with the context of its book (`GET /me/codes`)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    **_CODE_EXAMPLE,
                    "book_name": "Summer sale",
                    "book_description": "10% off everything in July.",
                    "book_expires_at": "2026-07-31T22:00:00Z",
                    "book_active": True,
                    "book_status": "active",
                }
            ]
        }
    )

    book_name: str
    book_description: str | None
    book_expires_at: datetime | None
    book_active: bool = Field(
        description="Whether the book hands out and redeems codes now (active and in its window)."
    )
    book_status: BookStatus


class MyBookOut(BaseModel):
    """A book the caller may claim from now (`GET /me/books`)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "3f1c2a4e-8d7b-4f0e-9c61-2b5a7e9d1c40",
                    "name": "Summer sale",
                    "description": "10% off everything in July.",
                    "expires_at": "2026-07-31T22:00:00Z",
                    "held": 1,
                    "may_claim": 2,
                }
            ]
        }
    )

    id: uuid.UUID
    name: str
    description: str | None
    expires_at: datetime | None
    held: int = Field(description="Codes of this book the caller holds.")
    may_claim: int = Field(
        description="Codes the caller may still claim: the per-user limit left, at most the"
        " free codes."
    )


class AssignIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{}, {"user_id": "8a6e0804-2bd0-4672-b79d-d97027f9071a"}]},
    )

    user_id: uuid.UUID | None = None


class LockIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"ttl_seconds": 120}]}
    )

    ttl_seconds: LockTtl | None = None
    lock_id: uuid.UUID | None = None


class UnlockIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"lock_id": "f0b7d0a2-7e39-4f7a-9a55-0c2f3b1e6d11"}]},
    )

    lock_id: uuid.UUID | None = None


class RedeemIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "lock_id": "f0b7d0a2-7e39-4f7a-9a55-0c2f3b1e6d11",
                    "order_ref": "ORD-1001",
                    "metadata": {"channel": "web"},
                }
            ]
        },
    )

    lock_id: uuid.UUID | None = None
    order_ref: (
        Annotated[str, StringConstraints(max_length=200), AfterValidator(storable)] | None
    ) = None
    metadata: Metadata | None = None


class RedeemOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "code": "SUMMER-2345-ABCD",
                    "redemption_id": 4211,
                    "redemptions": 1,
                    "redemptions_left": 0,
                }
            ]
        }
    )

    code: str
    redemption_id: int
    redemptions: int
    redemptions_left: int


class ValidateIn(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{}]})

    lock_id: uuid.UUID | None = None


class ValidateOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"redeemable": True},
                {"redeemable": False, "problem": "code-locked"},
            ]
        }
    )

    redeemable: bool
    problem: str | None = None


class RollbackIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"redemption_id": 4211, "reason": "payment failed"}]},
    )

    redemption_id: Annotated[int, Field(strict=True, ge=1, le=2**62)]
    reason: Text | None = None


class DistributeIn(BaseModel):
    """Exactly one of `segment_id` or `user_ids` (else 422)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"segment_id": "6c1f6a4e-1f2b-4a6e-9a3f-55e2b7d1c0aa"},
                {"user_ids": ["8a6e0804-2bd0-4672-b79d-d97027f9071a"]},
            ]
        },
    )

    segment_id: uuid.UUID | None = None
    user_ids: Annotated[list[uuid.UUID], Field(min_length=1, max_length=100_000)] | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> DistributeIn:
        if (self.segment_id is None) == (self.user_ids is None):
            raise ValueError("give exactly one of segment_id or user_ids")
        return self


class Skipped(BaseModel):
    limit_reached: int
    exhausted: int
    unknown_users: int


class DistributeOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "assigned": 98,
                    "skipped": {"limit_reached": 2, "exhausted": 0, "unknown_users": 0},
                }
            ]
        }
    )

    assigned: int
    skipped: Skipped


class DistributePreviewOut(BaseModel):
    """What a distribute would do now (`POST /books/{id}/distribute/preview`)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "audience": 312,
                    "would_assign": 298,
                    "already_holding": 14,
                    "free_codes": 5000,
                    "skipped": {"limit_reached": 14, "exhausted": 0, "unknown_users": 0},
                }
            ]
        }
    )

    audience: int = Field(description="Users in the segment, or listed users that exist.")
    would_assign: int = Field(description="Users who would get a code now.")
    already_holding: int = Field(description="Users of the audience who hold a code of the book.")
    free_codes: int = Field(description="Codes of the book not handed out yet.")
    skipped: Skipped


class ImportOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"received": 1000, "inserted": 990, "duplicates_in_file": 4, "already_present": 6}
            ]
        }
    )

    received: int
    inserted: int
    duplicates_in_file: int
    already_present: int


# Generations up to GENERATE_SYNC_MAX codes may answer in the request; larger ones are jobs.
GENERATE_SYNC_MAX = 1_000_000
GENERATE_MAX = 10_000_000
CodePattern = Annotated[str, StringConstraints(min_length=1, max_length=CODE_MAX_LENGTH)]
# At least one generated character follows the prefix.
CodePrefix = Annotated[
    str, StringConstraints(max_length=CODE_MAX_LENGTH - 1, pattern=r"^[A-Za-z0-9_-]*$")
]


class GenerateIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"count": 1000, "pattern": "SUMMER-####-????"},
                {"count": 50, "length": 8},
                {"count": 5_000_000, "prefix": "BIG-", "length": 10, "async": True},
            ]
        },
        populate_by_name=True,
    )

    count: Annotated[int, Field(strict=True, ge=1, le=GENERATE_MAX)]
    pattern: CodePattern | None = None
    prefix: CodePrefix | None = None
    length: Annotated[int, Field(strict=True, ge=1, le=CODE_MAX_LENGTH)] = 10
    # Above GENERATE_SYNC_MAX codes a generation always runs as a job.
    run_async: Annotated[
        bool,
        Field(
            strict=True,
            alias="async",
            description=f"Run as a background job (202); always so above {GENERATE_SYNC_MAX:,}.",
        ),
    ] = False

    @property
    def as_job(self) -> bool:
        return self.run_async or self.count > GENERATE_SYNC_MAX

    # End each code in a check character (default: the book's `checksum`); needs a literal
    # prefix (pattern or `prefix`), which becomes the checksum namespace.
    checksum: StrictBool | None = None


class GenerateOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"inserted": 1000}]})

    inserted: int


class HistoryEntry(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": 4211,
                    "at": "2026-07-02T09:31:00Z",
                    "action": "redeemed",
                    "code": "SUMMER-2345-ABCD",
                    "book_id": "3f1c2a4e-8d7b-4f0e-9c61-2b5a7e9d1c40",
                    "user_id": "8a6e0804-2bd0-4672-b79d-d97027f9071a",
                    "actor_id": "8a6e0804-2bd0-4672-b79d-d97027f9071a",
                    "details": {"order_ref": "ORD-1001"},
                }
            ]
        }
    )

    id: int
    at: datetime
    action: Action
    code: str
    book_id: uuid.UUID
    user_id: uuid.UUID | None
    actor_id: uuid.UUID | None
    details: dict[str, Any]


class BookReportPoint(BaseModel):
    """Counts of one hour or day (`at`: its start, UTC)."""

    at: datetime
    assigned: int
    locked: int
    redeemed: int
    rolled_back: int


class BookReportOut(BaseModel):
    """Counts per bucket over `since`..`until`, every bucket present (zero-filled)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "bucket": "day",
                    "since": "2026-07-01T00:00:00Z",
                    "until": "2026-07-02T00:00:00Z",
                    "points": [
                        {
                            "at": "2026-07-01T00:00:00Z",
                            "assigned": 40,
                            "locked": 12,
                            "redeemed": 9,
                            "rolled_back": 1,
                        }
                    ],
                }
            ]
        }
    )

    bucket: Bucket
    since: datetime
    until: datetime
    points: list[BookReportPoint]
