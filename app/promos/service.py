"""Promos: admin CRUD, cancel and stats. Reserve and purchase live in `reservations.py`,
what users see in `listings.py`."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import delete, exists, select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.problems import NotFound, ValidationFailed
from app.promos import events, rules
from app.promos.catalog import unknown_reference
from app.promos.errors import InUse
from app.promos.models import Product, Promo, PromoSegment, Reservation
from app.promos.schemas import PromoOut, PromoStats
from app.segments.models import Segment

_SELECT = f"""
    SELECT p.id, p.product_id, p.title, p.promo_price_cents, p.quantity, p.max_per_user,
           p.starts_at, p.ends_at, p.radius_m, p.active, p.cancelled_at,
           {rules.SOLD_OUT_AT} AS sold_out_at, p.notified_at, p.created_at,
           {rules.STATUS} AS status,
           ARRAY(SELECT ps.segment_id FROM promo_segments ps
                 WHERE ps.promo_id = p.id ORDER BY ps.segment_id) AS segment_ids
    FROM promos p
"""


async def _check_segments(session: AsyncSession, segment_ids: list[uuid.UUID]) -> None:
    if not segment_ids:
        return
    found = set(
        (await session.execute(select(Segment.id).where(Segment.id.in_(segment_ids)))).scalars()
    )
    missing = [s for s in segment_ids if s not in found]
    if missing:
        raise unknown_reference("segment_ids", missing[0], "segment")


async def _set_segments(
    session: AsyncSession, promo_id: uuid.UUID, segment_ids: list[uuid.UUID]
) -> None:
    await session.execute(delete(PromoSegment).where(PromoSegment.promo_id == promo_id))
    if segment_ids:
        rows = [{"promo_id": promo_id, "segment_id": s} for s in dict.fromkeys(segment_ids)]
        await session.execute(insert(PromoSegment).values(rows).on_conflict_do_nothing())


async def get_promo(session: AsyncSession, promo_id: uuid.UUID) -> PromoOut:
    """A promo with its derived status (on the database clock) and segments."""
    row = (
        (await session.execute(text(_SELECT + " WHERE p.id = :id"), {"id": promo_id}))
        .mappings()
        .first()
    )
    if row is None:
        raise NotFound(f"No promo {promo_id}.")
    return PromoOut.model_validate(dict(row))


async def list_promos(
    session: AsyncSession,
    limit: int,
    after: tuple[datetime, uuid.UUID] | None,
    status: str | None,
    product_id: uuid.UUID | None,
) -> list[PromoOut]:
    """Newest first, keyset-paginated on (created_at, id); optional status and product."""
    where = ["true"]
    params: dict[str, Any] = {"limit": limit}
    if after is not None:
        where.append("(p.created_at, p.id) < (:after_at, :after_id)")
        params["after_at"], params["after_id"] = after
    if status is not None:
        where.append(f"{rules.STATUS} = :status")
        params["status"] = status
    if product_id is not None:
        where.append("p.product_id = :product_id")
        params["product_id"] = product_id
    sql = (
        _SELECT + f" WHERE {' AND '.join(where)} ORDER BY p.created_at DESC, p.id DESC LIMIT :limit"
    )
    rows = (await session.execute(text(sql), params)).mappings()
    return [PromoOut.model_validate(dict(r)) for r in rows]


async def create_promo(session: AsyncSession, fields: dict[str, Any]) -> PromoOut:
    """Create a promo; its units are created with it (trigger on `promos`)."""
    segment_ids: list[uuid.UUID] = fields.pop("segment_ids", [])
    if await session.get(Product, fields["product_id"]) is None:
        raise unknown_reference("product_id", fields["product_id"], "product")
    await _check_segments(session, segment_ids)
    promo = Promo(**fields)
    session.add(promo)
    await session.flush()
    await _set_segments(session, promo.id, segment_ids)
    out = await get_promo(session, promo.id)
    await _sync_started(session, out)
    return out


async def _sync_started(session: AsyncSession, promo: PromoOut) -> None:
    """Keep the promo's `promo.started` job in step (`events.py`): due at `starts_at` (at once
    if already running) while the promo may still run; none for drafts and cancelled or
    ended promos."""
    if promo.status in ("scheduled", "running"):
        await events.schedule_started(session, promo.id, promo.starts_at)
    else:
        await events.cancel_started(session, promo.id)


async def _lock_promo(session: AsyncSession, promo_id: uuid.UUID) -> Promo:
    promo = (
        await session.execute(select(Promo).where(Promo.id == promo_id).with_for_update())
    ).scalar_one_or_none()
    if promo is None:
        raise NotFound(f"No promo {promo_id}.")
    return promo


async def update_promo(
    session: AsyncSession, promo_id: uuid.UUID, changes: dict[str, Any]
) -> PromoOut:
    """Change any field but the product. Lowering `quantity` is refused (409) while a unit
    above the new quantity was ever reserved; raising it reopens a sold-out promo."""
    promo = await _lock_promo(session, promo_id)
    segment_ids: list[uuid.UUID] | None = changes.pop("segment_ids", None)
    starts_at = changes.get("starts_at", promo.starts_at)
    ends_at = changes.get("ends_at", promo.ends_at)
    if ends_at <= starts_at:
        raise ValidationFailed(
            "ends_at must be after starts_at.",
            errors=[{"loc": ["body", "ends_at"], "msg": "must be after starts_at"}],
        )
    quantity = changes.get("quantity", promo.quantity)
    if quantity < promo.quantity:
        in_use = await session.scalar(
            text(
                "SELECT EXISTS (SELECT 1 FROM promo_units u WHERE u.promo_id = :id"
                " AND u.seq > :q AND (u.state <> 'free' OR EXISTS ("
                " SELECT 1 FROM reservations r WHERE r.unit_id = u.id)))"
            ),
            {"id": promo_id, "q": quantity},
        )
        if in_use:
            raise InUse(f"Units above {quantity} have been reserved; the quantity cannot drop.")
    if segment_ids is not None:
        await _check_segments(session, segment_ids)
        await _set_segments(session, promo_id, segment_ids)
    for name, value in changes.items():
        setattr(promo, name, value)
    try:
        await session.flush()
    except IntegrityError as exc:  # a unit above the new quantity was claimed meanwhile
        raise InUse("Units above the new quantity are in use; the quantity cannot drop.") from exc
    out = await get_promo(session, promo_id)
    if changes.keys() & {"starts_at", "ends_at", "active"}:
        await _sync_started(session, out)
    return out


async def cancel_promo(session: AsyncSession, promo_id: uuid.UUID) -> PromoOut:
    """Cancel for good (idempotent). Live holds stay, but can no longer be purchased."""
    promo = await _lock_promo(session, promo_id)
    if promo.cancelled_at is None:
        await session.execute(
            text("UPDATE promos SET cancelled_at = now() WHERE id = :id"), {"id": promo_id}
        )
        await session.refresh(promo)
        await events.cancel_started(session, promo_id)
    return await get_promo(session, promo_id)


async def delete_promo(session: AsyncSession, promo_id: uuid.UUID) -> None:
    """Delete a promo nobody has reserved yet; afterwards only cancel is possible (409)."""
    promo = await _lock_promo(session, promo_id)
    if await session.scalar(select(exists().where(Reservation.promo_id == promo_id))):
        raise InUse(f"Promo {promo_id} has reservations; cancel it instead.")
    await events.cancel_started(session, promo_id)
    await session.delete(promo)
    await session.flush()


_STATS = text(
    f"""
    SELECT p.quantity AS units,
           count(u.id) FILTER (WHERE u.state = 'free'
                               OR (u.state = 'held' AND {rules.HOLD_LAPSED})) AS free,
           count(u.id) FILTER (WHERE u.state = 'held' AND {rules.HOLD_LIVE}) AS held,
           count(u.id) FILTER (WHERE u.state = 'sold') AS sold,
           (SELECT count(*) FROM reservations x WHERE x.promo_id = p.id) AS reservations,
           (SELECT count(*) FROM notifications n WHERE n.promo_id = p.id) AS notified
    FROM promos p
    LEFT JOIN promo_units u ON u.promo_id = p.id
    LEFT JOIN reservations r ON r.id = u.reservation_id
    WHERE p.id = :id
    GROUP BY p.id
    """
)


async def promo_stats(session: AsyncSession, promo_id: uuid.UUID) -> PromoStats:
    """Units by state, notifications sent and reservations ever made, in one statement."""
    row = (await session.execute(_STATS, {"id": promo_id})).mappings().first()
    if row is None:
        raise NotFound(f"No promo {promo_id}.")
    return PromoStats(**row)
