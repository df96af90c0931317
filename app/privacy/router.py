"""Routes for a person's data: erase (themself, or an admin for anyone) and export."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Request, Response, status

from app.api.deps import Audit, CurrentUser, Session
from app.core.audit import AuditTrail
from app.core.db import raw_connection
from app.core.openapi import AUTH, problems
from app.privacy import service
from app.privacy.schemas import PersonalData

router = APIRouter(tags=["privacy"])


@router.delete(
    "/me",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=problems(*AUTH, 404),
    tags=["me"],
)
async def erase_me(user: CurrentUser, session: Session, request: Request) -> None:
    """Erase the caller: live locks and reservations released; profile, email, location,
    inbox, memberships and sessions deleted; history kept under a pseudonymous id
    (docs/privacy.md). Again: 404."""
    conn = await raw_connection(session)
    done = await service.erase(conn, user.id, user.id)
    trail = AuditTrail(user.id, str(request.scope.get("state", {}).get("request_id", "")))
    await trail.record(conn, "user.erase", "user", user.id, after=done)


@router.delete(
    "/users/{user_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=problems(*AUTH, 403, 404),
    tags=["users"],
)
async def erase_user(user_id: uuid.UUID, session: Session, audit: Audit) -> None:
    """Erase a person (admin), as `DELETE /me` does. Again: 404."""
    conn = await raw_connection(session)
    done = await service.erase(conn, user_id, audit.actor_id)
    await audit.record(conn, "user.erase", "user", user_id, after=done)


@router.get("/me/export", response_model=PersonalData, responses=problems(*AUTH, 404), tags=["me"])
async def export_me(user: CurrentUser, session: Session) -> PersonalData:
    """Everything stored about the caller, as JSON (no password hash, no token secrets)."""
    return PersonalData(**await service.export(await raw_connection(session), user.id))
