"""Segments: static member lists, or rules evaluated by the `segment_contains` SQL function."""

from __future__ import annotations

import uuid

from sqlalchemy import delete, text
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.crud import get_or_404, page_by_id
from app.core.problems import NotFound
from app.segments.errors import NotStatic
from app.segments.models import Segment, SegmentMember
from app.segments.schemas import Rules, SegmentKind

# Users of one segment in id order (keyset), through the single definition of membership.
_MEMBERS = text(
    """
    SELECT u.id AS user_id, u.email
    FROM segments s
    JOIN users u ON segment_contains(s.kind, s.rules, s.id, u.id, u.tags, u.birth_date)
    WHERE s.id = :segment_id AND (CAST(:after AS uuid) IS NULL OR u.id > CAST(:after AS uuid))
    ORDER BY u.id
    LIMIT :limit
    """
)
_STATIC_MEMBERS = text(
    """
    SELECT u.id AS user_id, u.email
    FROM segment_members m JOIN users u ON u.id = m.user_id
    WHERE m.segment_id = :segment_id
      AND (CAST(:after AS uuid) IS NULL OR u.id > CAST(:after AS uuid))
    ORDER BY u.id
    LIMIT :limit
    """
)
_ADD = text(
    """
    INSERT INTO segment_members (segment_id, user_id)
    SELECT :segment_id, u.id FROM users u WHERE u.id = ANY(:user_ids)
    ON CONFLICT DO NOTHING
    """
)


async def create(
    session: AsyncSession, name: str, kind: SegmentKind, rules: Rules | None
) -> Segment:
    segment = Segment(name=name, kind=kind.value, rules=rules.as_json() if rules else {})
    session.add(segment)
    await session.flush()
    await session.refresh(segment)
    return segment


async def get(session: AsyncSession, segment_id: uuid.UUID) -> Segment:
    return await get_or_404(session, Segment, segment_id, "segment")


async def list_page(session: AsyncSession, limit: int, after: uuid.UUID | None) -> list[Segment]:
    return await page_by_id(session, Segment, limit, after)


async def update(
    session: AsyncSession, segment_id: uuid.UUID, name: str | None, rules: Rules | None
) -> Segment:
    segment = await get(session, segment_id)
    if name is not None:
        segment.name = name
    if rules is not None:
        if segment.kind != SegmentKind.rule.value:
            raise NotStatic("Only rule segments have rules.")
        if not rules.as_json():
            raise NotStatic("A rule segment needs at least one rule.")
        segment.rules = rules.as_json()
    await session.flush()
    return segment


async def remove(session: AsyncSession, segment_id: uuid.UUID) -> None:
    segment = await get(session, segment_id)
    await session.delete(segment)
    await session.flush()


async def add_members(
    session: AsyncSession, segment_id: uuid.UUID, user_ids: list[uuid.UUID]
) -> int:
    """Add existing users to a static segment; returns how many were new (unknown ids skip)."""
    segment = await get(session, segment_id)
    if segment.kind != SegmentKind.static.value:
        raise NotStatic("Members can only be added to static segments.")
    result = await session.execute(
        _ADD, {"segment_id": segment_id, "user_ids": list(set(user_ids))}
    )
    return int(getattr(result, "rowcount", 0) or 0)


async def remove_member(session: AsyncSession, segment_id: uuid.UUID, user_id: uuid.UUID) -> None:
    segment = await get(session, segment_id)
    if segment.kind != SegmentKind.static.value:
        raise NotStatic("Rule segments have no listed members.")
    result = await session.execute(
        delete(SegmentMember).where(
            SegmentMember.segment_id == segment_id, SegmentMember.user_id == user_id
        )
    )
    if not getattr(result, "rowcount", 0):
        raise NotFound(f"User {user_id} is not a member of segment {segment_id}.")


async def members(
    session: AsyncSession, segment_id: uuid.UUID, limit: int, after: uuid.UUID | None
) -> list[tuple[uuid.UUID, str]]:
    """Users in the segment (listed members, or those the rules match), by id."""
    segment = await get(session, segment_id)
    query = _STATIC_MEMBERS if segment.kind == SegmentKind.static.value else _MEMBERS
    rows = await session.execute(
        query, {"segment_id": segment_id, "after": str(after) if after else None, "limit": limit}
    )
    return [(r.user_id, r.email) for r in rows]
