"""HTTP routes of segments (admin): CRUD and static members."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Response, status

from app.api.deps import AdminUser, Audit, Idempotent, Session
from app.core.openapi import AUTH, problems
from app.core.pagination import Cursor, Limit, Page, encode_cursor, uuid_cursor
from app.segments import service
from app.segments.schemas import (
    MemberOut,
    MembersAdded,
    MembersIn,
    SegmentIn,
    SegmentOut,
    SegmentPatch,
)

router = APIRouter(prefix="/segments", tags=["segments"])
ERRORS = problems(*AUTH, 403, 404)


@router.post("", status_code=status.HTTP_201_CREATED, response_model=SegmentOut, responses=ERRORS)
async def create_segment(
    body: SegmentIn,
    admin: AdminUser,
    session: Session,
    response: Response,
    idem: Idempotent,
    audit: Audit,
) -> SegmentOut:
    """Create a static segment (members added later) or a rule segment."""
    segment = await service.create(session, body.name, body.kind, body.rules)
    response.headers["Location"] = f"/api/v1/segments/{segment.id}"
    out = SegmentOut.model_validate(segment)
    await audit.record(session, "segment.create", "segment", segment.id, after=out)
    await idem.remember(status.HTTP_201_CREATED, out)
    return out


@router.get("", response_model=Page[SegmentOut], responses=ERRORS)
async def list_segments(
    admin: AdminUser, session: Session, limit: Limit = 50, cursor: Cursor = None
) -> Page[SegmentOut]:
    """Segments, keyset-paginated by id."""
    rows = await service.list_page(session, limit + 1, uuid_cursor(cursor))
    page = rows[:limit]
    return Page[SegmentOut](
        items=[SegmentOut.model_validate(s) for s in page],
        next_cursor=encode_cursor(page[-1].id) if len(rows) > limit else None,
    )


@router.get("/{segment_id}", response_model=SegmentOut, responses=ERRORS)
async def get_segment(segment_id: uuid.UUID, admin: AdminUser, session: Session) -> SegmentOut:
    """One segment."""
    return SegmentOut.model_validate(await service.get(session, segment_id))


@router.patch("/{segment_id}", response_model=SegmentOut, responses=ERRORS)
async def patch_segment(
    segment_id: uuid.UUID, body: SegmentPatch, admin: AdminUser, session: Session, audit: Audit
) -> SegmentOut:
    """Rename a segment or change its rules; absent fields are unchanged."""
    before = SegmentOut.model_validate(await service.get(session, segment_id))
    after = SegmentOut.model_validate(
        await service.update(session, segment_id, body.name, body.rules)
    )
    await audit.changed(session, "segment.update", "segment", segment_id, before, after)
    return after


@router.delete("/{segment_id}", status_code=status.HTTP_204_NO_CONTENT, responses=ERRORS)
async def delete_segment(
    segment_id: uuid.UUID, admin: AdminUser, session: Session, audit: Audit
) -> Response:
    """Delete a segment and its memberships; promos stop targeting it."""
    before = SegmentOut.model_validate(await service.get(session, segment_id))
    await service.remove(session, segment_id)
    await audit.record(session, "segment.delete", "segment", segment_id, before=before)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/{segment_id}/members", response_model=MembersAdded, responses=ERRORS)
async def add_members(
    segment_id: uuid.UUID,
    body: MembersIn,
    admin: AdminUser,
    session: Session,
    idem: Idempotent,
    audit: Audit,
) -> MembersAdded:
    """Add users to a static segment; unknown ids are ignored, `added` counts new members."""
    out = MembersAdded(added=await service.add_members(session, segment_id, body.user_ids))
    after = {"users": len(body.user_ids), "added": out.added}
    await audit.record(session, "segment.members.add", "segment", segment_id, after=after)
    await idem.remember(status.HTTP_200_OK, out)
    return out


@router.delete(
    "/{segment_id}/members/{user_id}", status_code=status.HTTP_204_NO_CONTENT, responses=ERRORS
)
async def remove_member(
    segment_id: uuid.UUID, user_id: uuid.UUID, admin: AdminUser, session: Session, audit: Audit
) -> Response:
    """Take a user out of a static segment; 404 if they are not in it."""
    await service.remove_member(session, segment_id, user_id)
    before = {"user_id": str(user_id)}
    await audit.record(session, "segment.members.remove", "segment", segment_id, before=before)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/{segment_id}/members", response_model=Page[MemberOut], responses=ERRORS)
async def list_members(
    segment_id: uuid.UUID,
    admin: AdminUser,
    session: Session,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Page[MemberOut]:
    """Users in the segment: its listed members, or for a rule segment those the rules match."""
    rows = await service.members(session, segment_id, limit + 1, uuid_cursor(cursor))
    page = rows[:limit]
    return Page[MemberOut](
        items=[MemberOut(user_id=uid, email=email) for uid, email in page],
        next_cursor=encode_cursor(page[-1][0]) if len(rows) > limit else None,
    )
