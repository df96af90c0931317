"""Response bodies of the notification routes."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field


class NotificationStatus(StrEnum):
    unread = "unread"
    read = "read"


class NotificationOut(BaseModel):
    """An inbox entry. `id` is an integer, also the dedupe key webhook receivers see."""

    model_config = ConfigDict(
        from_attributes=True,
        json_schema_extra={
            "examples": [
                {
                    "id": 1042,
                    "promo_id": "0b7e4a51-96a4-4f0e-8d55-3a4c0e7d2f10",
                    "title": "Croissant a 1 euro",
                    "day": "2026-11-23",
                    "status": "unread",
                    "created_at": "2026-11-23T09:00:00.512Z",
                    "read_at": None,
                }
            ]
        },
    )

    id: int
    promo_id: uuid.UUID
    title: str | None = Field(default=None, description="The promo's title.")
    day: date = Field(description="The user's local calendar day (profile time zone).")
    status: NotificationStatus
    created_at: datetime
    read_at: datetime | None = None
    promo_price_cents: int | None = Field(default=None, description="The promo's price.")
    price_cents: int | None = Field(default=None, description="The product's regular price.")
    currency: str | None = None
    store_name: str | None = None
    ends_at: datetime | None = Field(default=None, description="When the promo ends.")


class DeadLetterOut(BaseModel):
    """An outbox job whose attempts ran out (`status` = dead), or one just sent back to retry
    (`status` = pending)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": 77,
                    "topic": "webhook.deliver",
                    "status": "dead",
                    "promo_id": "0b7e4a51-96a4-4f0e-8d55-3a4c0e7d2f10",
                    "notifications": 1000,
                    "attempts": 8,
                    "max_attempts": 8,
                    "last_error": "HTTP 503",
                    "run_at": "2026-11-23T09:42:10Z",
                    "created_at": "2026-11-23T09:00:01Z",
                    "updated_at": "2026-11-23T09:42:10Z",
                }
            ]
        }
    )

    id: int
    topic: str
    status: str
    promo_id: uuid.UUID | None = None
    notifications: int = Field(description="Notifications the job carries (webhook batches).")
    attempts: int
    max_attempts: int
    last_error: str | None = None
    run_at: datetime
    created_at: datetime
    updated_at: datetime
