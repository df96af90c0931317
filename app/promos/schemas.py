"""Request and response bodies of stores, products, promos and reservations.

Inputs are strict: integers refuse `"1"` and `true`, floats refuse NaN and Infinity, text
refuses NUL bytes, and times must carry an offset.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Literal, Self

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    JsonValue,
    StrictBool,
    StringConstraints,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

from app.core.geo import Lat, Lng
from app.core.openapi import without_null
from app.core.report import Bucket

_NO_NUL = r"^[^\x00]*$"
Name = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=_NO_NUL)]
Address = Annotated[str, StringConstraints(max_length=500, pattern=_NO_NUL)]
Cents = Annotated[int, Field(strict=True, ge=0, le=2_000_000_000)]
Currency = Annotated[str, StringConstraints(min_length=3, max_length=3, pattern=r"^[A-Z]{3}$")]
Quantity = Annotated[int, Field(strict=True, ge=1, le=100_000)]
MaxPerUser = Annotated[int, Field(strict=True, ge=1, le=10_000)]
RadiusM = Annotated[int, Field(strict=True, ge=1, le=1_000_000)]
SegmentIds = Annotated[list[uuid.UUID], Field(max_length=100)]

_EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
_LATEST = datetime(9000, 1, 1, tzinfo=UTC)


def _utc_in_range(value: datetime) -> datetime:
    try:
        utc = value.astimezone(UTC)
    except OverflowError as exc:
        raise ValueError("time out of range") from exc
    if not _EARLIEST <= utc < _LATEST:
        raise ValueError("time must be between 1970 and 9000")
    return utc


Instant = Annotated[AwareDatetime, AfterValidator(_utc_in_range)]
PromoStatus = Literal["draft", "scheduled", "running", "sold_out", "ended", "cancelled"]
ReservationStatus = Literal["held", "purchased", "cancelled", "expired"]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Patch(_In):
    """A partial update: absent fields stay; `null` only where the column is nullable."""

    nullable: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        schema = handler.resolve_ref_schema(handler(core_schema))
        without_null(schema, set(cls.model_fields) - cls.nullable)
        return schema

    @model_validator(mode="after")
    def _no_null_for_required(self) -> Self:
        for name in self.model_fields_set:
            if getattr(self, name) is None and name not in self.nullable:
                raise ValueError(f"{name} cannot be null")
        return self

    def changes(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.model_fields_set}


# Stores


class StoreIn(_In):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"name": "Centro", "lat": 40.4168, "lng": -3.7038, "address": "Puerta del Sol 1"}
            ]
        },
    )

    name: Name
    lat: Lat
    lng: Lng
    address: Address | None = None


class StorePatch(_Patch):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"name": "Centro (reformado)"}]}
    )
    nullable: ClassVar[frozenset[str]] = frozenset({"address"})

    name: Name | None = None
    lat: Lat | None = None
    lng: Lng | None = None
    address: Address | None = None


class StoreOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    lat: float
    lng: float
    address: str | None
    created_at: datetime


# Products


class ProductIn(_In):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "store_id": "3fa85f64-5717-4562-b3fc-2c963f66afa6",
                    "name": "Croissant",
                    "price_cents": 250,
                    "currency": "EUR",
                }
            ]
        },
    )

    store_id: uuid.UUID
    name: Name
    price_cents: Cents
    currency: Currency = "EUR"


class ProductPatch(_Patch):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"price_cents": 275}]}
    )

    store_id: uuid.UUID | None = None
    name: Name | None = None
    price_cents: Cents | None = None
    currency: Currency | None = None


class ProductOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    store_id: uuid.UUID
    name: str
    price_cents: int
    currency: str
    created_at: datetime


# Promos

_PROMO_EXAMPLE: dict[str, JsonValue] = {
    "product_id": "3fa85f64-5717-4562-b3fc-2c963f66afa6",
    "title": "Croissant a 1 euro",
    "promo_price_cents": 100,
    "quantity": 10,
    "max_per_user": 1,
    "starts_at": "2026-11-23T12:00:00Z",
    "ends_at": "2026-11-23T13:00:00Z",
    "radius_m": 2000,
    "segment_ids": [],
    "active": True,
}


class PromoIn(_In):
    """A promo; `ends_at` must be after `starts_at` (else 422)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [_PROMO_EXAMPLE]})

    product_id: uuid.UUID
    title: Name
    promo_price_cents: Cents
    quantity: Quantity = 1
    max_per_user: MaxPerUser = 1
    starts_at: Instant
    ends_at: Instant
    radius_m: RadiusM = 2000
    segment_ids: SegmentIds = []
    active: StrictBool = True

    @model_validator(mode="after")
    def _window(self) -> Self:
        if self.ends_at <= self.starts_at:
            raise ValueError("ends_at must be after starts_at")
        return self


class PromoPatch(_Patch):
    """Any field but the product; `quantity` may shrink only over units never reserved."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"title": "Croissant a 90 cents", "quantity": 20}]},
    )

    title: Name | None = None
    promo_price_cents: Cents | None = None
    quantity: Quantity | None = None
    max_per_user: MaxPerUser | None = None
    starts_at: Instant | None = None
    ends_at: Instant | None = None
    radius_m: RadiusM | None = None
    segment_ids: SegmentIds | None = None
    active: StrictBool | None = None


class PromoOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    **_PROMO_EXAMPLE,
                    "id": "9b2f4f0e-1c7a-4a55-9a57-3f1d2b8c0e11",
                    "status": "running",
                    "cancelled_at": None,
                    "sold_out_at": None,
                    "notified_at": None,
                    "created_at": "2026-11-23T11:00:00Z",
                }
            ]
        }
    )

    id: uuid.UUID
    product_id: uuid.UUID
    title: str
    promo_price_cents: int
    quantity: int
    max_per_user: int
    starts_at: datetime
    ends_at: datetime
    radius_m: int
    segment_ids: list[uuid.UUID]
    active: bool
    status: PromoStatus
    cancelled_at: datetime | None
    sold_out_at: datetime | None
    notified_at: datetime | None
    created_at: datetime


class PromoListing(BaseModel):
    """A running promo as users see it: the deal, the store and how many units are left."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "9b2f4f0e-1c7a-4a55-9a57-3f1d2b8c0e11",
                    "title": "Croissant a 1 euro",
                    "product_id": "3fa85f64-5717-4562-b3fc-2c963f66afa6",
                    "product_name": "Croissant",
                    "price_cents": 250,
                    "promo_price_cents": 100,
                    "currency": "EUR",
                    "store_id": "5c1d7e0a-2b3c-4d5e-8f90-a1b2c3d4e5f6",
                    "store_name": "Centro",
                    "lat": 40.4168,
                    "lng": -3.7038,
                    "starts_at": "2026-11-23T12:00:00Z",
                    "ends_at": "2026-11-23T13:00:00Z",
                    "radius_m": 2000,
                    "units_left": 7,
                }
            ]
        }
    )

    id: uuid.UUID
    title: str
    product_id: uuid.UUID
    product_name: str
    price_cents: int
    promo_price_cents: int
    currency: str
    store_id: uuid.UUID
    store_name: str
    lat: float
    lng: float
    starts_at: datetime
    ends_at: datetime
    radius_m: int
    units_left: int


class EligiblePromo(PromoListing):
    """A running promo the caller may reserve, with the distance to its store."""

    distance_m: float


class PromoStats(BaseModel):
    """Units by state (`free` counts lapsed holds, `held` only live ones), notifications sent
    for the promo, and reservations ever made."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"units": 10, "free": 6, "held": 1, "sold": 3, "notified": 0, "reservations": 5}
            ]
        }
    )

    units: int
    free: int
    held: int
    sold: int
    notified: int
    reservations: int


# Reservations


class ReservationOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "0d6c5b8a-7e2f-4c1d-9a3b-5e6f7a8b9c0d",
                    "promo_id": "9b2f4f0e-1c7a-4a55-9a57-3f1d2b8c0e11",
                    "expires_at": "2026-11-23T12:01:00Z",
                    "status": "held",
                }
            ]
        }
    )

    id: uuid.UUID
    promo_id: uuid.UUID
    expires_at: datetime
    status: ReservationStatus


class MyReservationOut(ReservationOut):
    """One of the caller's reservations with its promo's context (`GET /me/reservations`)."""

    purchased_at: datetime | None = Field(description="When it was bought; null until then.")
    promo_title: str
    promo_price_cents: int
    price_cents: int = Field(description="The product's regular price.")
    currency: str
    product_name: str
    store_name: str


class PromoReportPoint(BaseModel):
    """Counts of one hour or day (`at`: its start, UTC)."""

    at: datetime
    reserved: int
    purchased: int
    notified: int
    read: int


class PromoReportOut(BaseModel):
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
                            "reserved": 30,
                            "purchased": 24,
                            "notified": 500,
                            "read": 120,
                        }
                    ],
                }
            ]
        }
    )

    bucket: Bucket
    since: datetime
    until: datetime
    points: list[PromoReportPoint]
