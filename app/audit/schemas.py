"""Audit entries as the admin reads them."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


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


class LogVerdict(BaseModel):
    log: str = Field(description="`history` (redemption history) or `purchases` (purchase log)")
    ok: bool
    blocks: int
    rows: int
    first_bad_block: int | None


class ChainVerdict(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "ok": True,
                    "blocks": 5310,
                    "rows": 1912002,
                    "first_bad_block": None,
                    "first_bad_log": None,
                    "logs": [
                        {
                            "log": "history",
                            "ok": True,
                            "blocks": 5210,
                            "rows": 1834002,
                            "first_bad_block": None,
                        },
                        {
                            "log": "purchases",
                            "ok": True,
                            "blocks": 100,
                            "rows": 78000,
                            "first_bad_block": None,
                        },
                    ],
                }
            ]
        }
    )

    ok: bool = Field(description="Every log's chain recomputes.")
    blocks: int = Field(description="Blocks of every log.")
    rows: int = Field(description="Rows sealed in every log (verified up to the first bad block).")
    first_bad_block: int | None = Field(
        description="The first bad block of `first_bad_log` (each log numbers its own blocks)."
    )
    first_bad_log: str | None = Field(description="The first log, in `logs` order, that fails.")
    logs: list[LogVerdict]
