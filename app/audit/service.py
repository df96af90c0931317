"""Reading the admin audit trail."""

from __future__ import annotations

import uuid
from datetime import datetime

import asyncpg
import orjson

from app.audit.schemas import AuditEntry

_PAGE = """
SELECT id, at, actor_id, request_id, action, target_type, target_id, before, after
FROM admin_audit
WHERE ($1::text IS NULL OR target_id = $1)
  AND ($2::text IS NULL OR target_type = $2)
  AND ($3::uuid IS NULL OR actor_id = $3)
  AND ($4::timestamptz IS NULL OR at >= $4)
  AND ($5::bigint IS NULL OR id < $5)
ORDER BY id DESC LIMIT $6
"""


def _json(value: object) -> object:
    """A jsonb value: decoded already by the connection's codec, or JSON text without one."""
    return orjson.loads(value) if isinstance(value, str | bytes) else value


async def list_entries(
    conn: asyncpg.Connection,
    *,
    target: str | None,
    actor: uuid.UUID | None,
    since: datetime | None,
    before_id: int | None,
    limit: int,
) -> list[AuditEntry]:
    """Newest first. `target` is an id, or `type:id` (e.g. `book:<uuid>`, `lockout:ip:…`)."""
    target_type = None
    if target is not None and ":" in target:
        target_type, _, target = target.partition(":")
    rows = await conn.fetch(_PAGE, target, target_type, actor, since, before_id, limit)
    return [
        AuditEntry(**{**dict(r), "before": _json(r["before"]), "after": _json(r["after"])})
        for r in rows
    ]
