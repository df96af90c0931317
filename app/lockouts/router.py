"""Admin routes on guessing lockouts: list the locked keys, clear one."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response, status

from app.api.deps import AdminUser, AppServices, Audit, Session
from app.core.db import raw_connection
from app.core.openapi import AUTH, problems
from app.core.pagination import Cursor, Limit, Page, decode_cursor, encode_cursor
from app.core.problems import NotFound
from app.lockouts import service
from app.lockouts.schemas import LockoutOut

router = APIRouter(tags=["lockouts"])

Key = Annotated[
    str,
    Path(
        min_length=4,
        max_length=200,
        pattern=r"^(user|ip|account):[^\x00/]+$",
        description="`user:<id>`, `ip:<address>` or `account:<email>`",
        examples=["ip:203.0.113.7"],
    ),
]


@router.get("/lockouts", response_model=Page[LockoutOut], responses=problems(*AUTH, 403))
async def list_lockouts(
    admin: AdminUser, session: Session, limit: Limit = 50, cursor: Cursor = None
) -> Page[LockoutOut]:
    """Keys locked now by too many failed lookups or logins, by key."""
    values = decode_cursor(cursor, 1)
    after = str(values[0]) if values is not None else None
    rows = await service.list_locked(await raw_connection(session), after, limit + 1)
    page = rows[:limit]
    more = len(rows) > limit
    return Page[LockoutOut](items=page, next_cursor=encode_cursor(page[-1].key) if more else None)


@router.delete(
    "/lockouts/{key}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=problems(*AUTH, 403, 404),
)
async def clear_lockout(
    key: Key, admin: AdminUser, session: Session, services: AppServices, audit: Audit
) -> None:
    """Forget a key's failures: its lockout ends at once (on other instances within
    `LOCKOUT_REFRESH_SECONDS`). 404 if the key has none."""
    before = await service.clear(await raw_connection(session), key)
    if before is None:
        raise NotFound(f"No failures are recorded for {key}.")
    await audit.record(session, "lockout.clear", "lockout", key, before=before)
    services.lockouts.forget(key)
