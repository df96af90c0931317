"""What `GET /me/export` answers."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict


class PersonalData(BaseModel):
    """Everything stored about the caller, by kind."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "profile": {
                        "id": "8a6e0804-2bd0-4672-b79d-d97027f9071a",
                        "email": "ana@example.com",
                        "role": "user",
                        "created_at": "2026-06-20T10:00:00Z",
                        "lat": 40.4168,
                        "lng": -3.7038,
                        "location_updated_at": "2026-07-02T09:00:00Z",
                        "birth_date": None,
                        "tags": ["vip"],
                        "timezone": "Europe/Madrid",
                    },
                    "codes": [{"code": "SUMMER-2345-ABCD", "status": "redeemed"}],
                    "history": [{"id": 4211, "action": "redeemed", "code": "SUMMER-2345-ABCD"}],
                    "reservations": [],
                    "purchases": [],
                    "notifications": [],
                    "segments": [],
                    "sessions": [],
                    "admin_actions": [],
                }
            ]
        }
    )

    profile: dict[str, Any]
    codes: list[dict[str, Any]]
    history: list[dict[str, Any]]
    reservations: list[dict[str, Any]]
    purchases: list[dict[str, Any]]
    notifications: list[dict[str, Any]]
    segments: list[dict[str, Any]]
    sessions: list[dict[str, Any]]
    admin_actions: list[dict[str, Any]]
