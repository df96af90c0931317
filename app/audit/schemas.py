"""Audit entries as the admin reads them."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict


class AuditEntry(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": 981,
                    "at": "2026-07-02T09:31:00Z",
                    "actor_id": "8a6e0804-2bd0-4672-b79d-d97027f9071a",
                    "request_id": "4bf92f3577b34da6a3ce929d0e0e4736",
                    "action": "book.update",
                    "target_type": "book",
                    "target_id": "3f1c2a4e-8d7b-4f0e-9c61-2b5a7e9d1c40",
                    "before": {"status": "active"},
                    "after": {"status": "paused"},
                }
            ]
        }
    )

    id: int
    at: datetime
    actor_id: uuid.UUID | None
    request_id: str
    action: str
    target_type: str
    target_id: str
    before: Any = None
    after: Any = None


class ChainVerdict(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"ok": True, "blocks": 5210, "rows": 1834002, "first_bad_block": None}]
        }
    )

    ok: bool
    blocks: int
    rows: int
    first_bad_block: int | None
