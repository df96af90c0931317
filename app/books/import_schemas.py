"""Bodies of import jobs: a CSV upload or a large generation, run by the worker."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict


class JobState(StrEnum):
    received = "received"  # stored, waiting for a worker
    queued = "queued"  # a worker has it, but another job of the book is running
    validating = "validating"
    inserting = "inserting"
    done = "done"
    failed = "failed"
    cancelled = "cancelled"


FINISHED = frozenset({JobState.done, JobState.failed, JobState.cancelled})


class JobKind(StrEnum):
    csv = "csv"
    generate = "generate"


class LineError(BaseModel):
    line: int
    code: str
    reason: str


class ImportJobOut(BaseModel):
    """An import job as it stands. `lines_total` counts the lines of the file (blank ones
    and a header included) or the codes to generate; `progress` is `lines_done` over it."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "0b5c8a52-93a6-4d8e-9a3e-5f4f0e1d2c3b",
                    "book_id": "3f1c2a4e-8d7b-4f0e-9c61-2b5a7e9d1c40",
                    "kind": "csv",
                    "state": "inserting",
                    "received_bytes": 170000000,
                    "lines_total": 10000001,
                    "lines_done": 4200000,
                    "inserted": 4200000,
                    "duplicates_in_file": 0,
                    "already_present": 0,
                    "error_count": 0,
                    "errors": [],
                    "detail": None,
                    "created_at": "2026-07-02T09:30:00Z",
                    "started_at": "2026-07-02T09:30:12Z",
                    "finished_at": None,
                    "progress": 0.42,
                }
            ]
        }
    )

    id: uuid.UUID
    book_id: uuid.UUID
    kind: JobKind
    state: JobState
    received_bytes: int
    lines_total: int
    lines_done: int
    inserted: int
    duplicates_in_file: int
    already_present: int
    error_count: int
    errors: list[LineError]
    detail: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    progress: float
