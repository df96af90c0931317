"""The admin audit trail: every change an admin makes is one row in `admin_audit`, written
in the transaction of the change itself (so it exists exactly when the change does), with
the actor, the request id, the target and what changed (`before` and `after`: only the
fields that differ, for an update; the whole object for a create or a delete). The table
is append-only (a trigger refuses UPDATE, DELETE and TRUNCATE)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import asyncpg
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.db import raw_connection

_INSERT = """
INSERT INTO admin_audit (actor_id, request_id, action, target_type, target_id, before, after)
VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7::jsonb)
"""


def as_json(value: Any) -> Any:
    """A JSON-ready copy: pydantic models as their JSON form, anything else through `json`
    (as the ORM stores JSON columns: integers of any size, as a book's metadata may hold)."""
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    return json.loads(json.dumps(value, default=str))


def diff(before: Any, after: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """The fields whose values differ, as they were and as they are."""
    old, new = as_json(before), as_json(after)
    assert isinstance(old, Mapping) and isinstance(new, Mapping)
    changed = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    was = {k: old[k] for k in changed if k in old}
    now = {k: new[k] for k in changed if k in new}
    return was, now


@dataclass(frozen=True, slots=True)
class AuditTrail:
    """Who is acting, in which request: `record` adds one entry."""

    actor_id: uuid.UUID
    request_id: str

    async def record(
        self,
        db: AsyncSession | asyncpg.Connection,
        action: str,
        target_type: str,
        target_id: object,
        *,
        before: Any = None,
        after: Any = None,
    ) -> None:
        """One entry, in the transaction of `db` (the change's own)."""
        conn = await raw_connection(db) if isinstance(db, AsyncSession) else db
        await conn.execute(
            _INSERT,
            self.actor_id,
            self.request_id,
            action,
            target_type,
            str(target_id),
            None if before is None else json.dumps(as_json(before)),
            None if after is None else json.dumps(as_json(after)),
        )

    async def changed(
        self,
        db: AsyncSession | asyncpg.Connection,
        action: str,
        target_type: str,
        target_id: object,
        before: Any,
        after: Any,
    ) -> None:
        """An update: only the fields that differ are kept."""
        old, new = diff(before, after)
        await self.record(db, action, target_type, target_id, before=old, after=new)
