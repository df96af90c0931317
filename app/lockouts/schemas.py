"""Lockouts as the admin sees them."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict


class LockoutOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "key": "ip:203.0.113.7",
                    "failures": 11,
                    "window_started_at": "2026-07-02T09:30:00Z",
                    "locked_until": "2026-07-02T09:40:00Z",
                }
            ]
        }
    )

    key: str
    failures: int
    window_started_at: datetime
    locked_until: datetime
