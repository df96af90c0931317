"""HTTP routes of the promos domain: promos (admin), what users see and their reservations;
reserving and buying are in `reservations_router`, stores and products in `catalog_router`.
Routes parse, authorise and call one service function."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Response, status

from app.api.deps import AdminUser, Audit, CurrentUser, Idempotent, Session, Tx
from app.core.openapi import AUTH, problems
from app.core.pagination import Cursor, Limit, Page, encode_cursor, time_id_cursor
from app.core.report import Bucket
from app.promos import listings, reports, reservations, service
from app.promos.catalog_router import router as catalog_router
from app.promos.schemas import (
    EligiblePromo,
    Instant,
    MyReservationOut,
    PromoIn,
    PromoListing,
    PromoOut,
    PromoPatch,
    PromoReportOut,
    PromoStats,
    PromoStatus,
)

router = APIRouter()
router.include_router(catalog_router)
PREFIX = "/api/v1"
ADMIN = (*AUTH, 403)


# What users see (declared before /promos/{promo_id} so "running" is not taken for an id)


@router.get(
    "/promos/running",
    response_model=Page[PromoListing],
    responses=problems(*AUTH),
    tags=["promos"],
)
async def running_promos(
    user: CurrentUser, session: Session, limit: Limit = 50, cursor: Cursor = None
) -> Page[PromoListing]:
    """Promos running now (started, not ended, cancelled nor sold out), ending soonest
    first, with `units_left` (free units plus lapsed holds)."""
    items = await listings.running_promos(session, limit + 1, time_id_cursor(cursor))
    page = items[:limit]
    next_cursor = encode_cursor(page[-1].ends_at, page[-1].id) if len(items) > limit else None
    return Page[PromoListing](items=page, next_cursor=next_cursor)


@router.get(
    "/me/promos", response_model=list[EligiblePromo], responses=problems(*AUTH), tags=["me"]
)
async def my_promos(
    user: CurrentUser,
    tx: Tx,
    limit: Annotated[int, Query(ge=1, le=500, description="At most this many (1..500).")] = 50,
) -> list[EligiblePromo]:
    """Running promos the caller may reserve (in one of their segments, or for everyone, and
    within the promo's radius of their last location), nearest first, with `distance_m` and
    `units_left`. `[]` until the caller has set a location (`PUT /me/location`)."""
    # One statement in its own implicit transaction: no BEGIN and COMMIT round trips.
    async with tx.one_statement() as conn:
        return await listings.eligible_promos(conn, user.id, limit)


# Promos (admin)


@router.post(
    "/promos",
    status_code=status.HTTP_201_CREATED,
    response_model=PromoOut,
    responses=problems(*ADMIN, 409),
    tags=["promos"],
)
async def create_promo(
    body: PromoIn,
    admin: AdminUser,
    session: Session,
    response: Response,
    idem: Idempotent,
    audit: Audit,
) -> PromoOut:
    """Put a product on a time-boxed promo with `quantity` units. `active: false` makes a
    draft that never runs; `segment_ids: []` offers it to everyone within `radius_m`."""
    out = await service.create_promo(session, body.model_dump())
    await audit.record(session, "promo.create", "promo", out.id, after=out)
    response.headers["Location"] = f"{PREFIX}/promos/{out.id}"
    await idem.remember(201, out)
    return out


@router.get("/promos", response_model=Page[PromoOut], responses=problems(*ADMIN), tags=["promos"])
async def list_promos(
    admin: AdminUser,
    session: Session,
    limit: Limit = 50,
    cursor: Cursor = None,
    status_filter: Annotated[
        PromoStatus | None, Query(alias="status", description="Only promos in this status.")
    ] = None,
    product_id: uuid.UUID | None = None,
) -> Page[PromoOut]:
    """Newest first; filter by derived `status` or `product_id`."""
    items = await service.list_promos(
        session, limit + 1, time_id_cursor(cursor), status_filter, product_id
    )
    page = items[:limit]
    next_cursor = encode_cursor(page[-1].created_at, page[-1].id) if len(items) > limit else None
    return Page[PromoOut](items=page, next_cursor=next_cursor)


@router.get(
    "/promos/{promo_id}",
    response_model=PromoOut,
    responses=problems(*ADMIN, 404),
    tags=["promos"],
)
async def get_promo(promo_id: uuid.UUID, admin: AdminUser, session: Session) -> PromoOut:
    """The promo with its `status` (draft|scheduled|running|sold_out|ended|cancelled)."""
    return await service.get_promo(session, promo_id)


@router.patch(
    "/promos/{promo_id}",
    response_model=PromoOut,
    responses=problems(*ADMIN, 404, 409),
    tags=["promos"],
)
async def patch_promo(
    promo_id: uuid.UUID, body: PromoPatch, admin: AdminUser, session: Session, audit: Audit
) -> PromoOut:
    """Change any field but the product. `quantity` may drop only over units never
    reserved (else 409 `conflict`); raising it reopens a sold-out promo."""
    before = await service.get_promo(session, promo_id)
    after = await service.update_promo(session, promo_id, body.changes())
    await audit.changed(session, "promo.update", "promo", promo_id, before, after)
    return after


@router.delete(
    "/promos/{promo_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=problems(*ADMIN, 404, 409),
    tags=["promos"],
)
async def delete_promo(
    promo_id: uuid.UUID, admin: AdminUser, session: Session, audit: Audit
) -> None:
    """Delete a promo nobody has reserved; afterwards cancel it instead (409 `conflict`)."""
    before = await service.get_promo(session, promo_id)
    await service.delete_promo(session, promo_id)
    await audit.record(session, "promo.delete", "promo", promo_id, before=before)


@router.post(
    "/promos/{promo_id}/cancel",
    response_model=PromoOut,
    responses=problems(*ADMIN, 404, 409),
    tags=["promos"],
)
async def cancel_promo(
    promo_id: uuid.UUID, admin: AdminUser, session: Session, idem: Idempotent, audit: Audit
) -> PromoOut:
    """Cancel the promo (idempotent): no more reservations nor purchases."""
    before = await service.get_promo(session, promo_id)
    out = await service.cancel_promo(session, promo_id)
    await audit.changed(session, "promo.cancel", "promo", promo_id, before, out)
    await idem.remember(200, out)
    return out


@router.get(
    "/promos/{promo_id}/stats",
    response_model=PromoStats,
    responses=problems(*ADMIN, 404),
    tags=["promos"],
)
async def promo_stats(promo_id: uuid.UUID, admin: AdminUser, session: Session) -> PromoStats:
    """Units by state, notifications sent for the promo, and reservations ever made."""
    return await service.promo_stats(session, promo_id)


@router.get(
    "/promos/{promo_id}/report",
    response_model=PromoReportOut,
    responses=problems(*ADMIN, 404),
    tags=["promos"],
)
async def promo_report(
    promo_id: uuid.UUID,
    admin: AdminUser,
    session: Session,
    bucket: Bucket = Bucket.day,
    since: Annotated[Instant | None, Query()] = None,
    until: Annotated[Instant | None, Query()] = None,
) -> PromoReportOut:
    """Units reserved and sold, notifications sent and read, per `bucket` (hour or day, cut
    in UTC) from `since` to `until` (default: the last 14 days, or 48 hours by the hour),
    every bucket present. At most 1,000 buckets (422 otherwise)."""
    return await reports.promo_report(session, promo_id, bucket, since, until)


@router.get(
    "/me/reservations",
    response_model=Page[MyReservationOut],
    responses=problems(*AUTH),
    tags=["me"],
)
async def my_reservations(
    user: CurrentUser,
    session: Session,
    limit: Limit = 50,
    cursor: Cursor = None,
    promo_id: uuid.UUID | None = None,
) -> Page[MyReservationOut]:
    """The caller's reservations, newest first; optionally of one promo. Each carries its
    promo's title and price, the product and store, and `purchased_at` once bought."""
    rows = await reservations.my_reservations(
        session, user.id, limit + 1, promo_id, time_id_cursor(cursor)
    )
    page = rows[:limit]
    next_cursor = encode_cursor(page[-1][1], page[-1][0].id) if len(rows) > limit else None
    return Page[MyReservationOut](items=[r for r, _ in page], next_cursor=next_cursor)
