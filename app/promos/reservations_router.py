"""HTTP routes of reservations: reserve, purchase, cancel and read one. These are the hot
paths: `LeanRoute` calls them without per-request dependency solving, and each runs in one
`Tx` (a transaction on a bare asyncpg connection). The caller's list is in `router`."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Response, status

from app.api.deps import AppSettings, CurrentUser, RateLimit, Tx
from app.core.lean import LeanRoute
from app.core.openapi import AUTH, problems
from app.promos import reservations
from app.promos.schemas import ReservationOut

router = APIRouter(route_class=LeanRoute)
PREFIX = "/api/v1"


@router.post(
    "/promos/{promo_id}/reserve",
    status_code=status.HTTP_201_CREATED,
    response_model=ReservationOut,
    responses={
        200: {"model": ReservationOut, "description": "The caller's live reservation, again."},
        **problems(*AUTH, 403, 404, 409),
    },
    tags=["reservations"],
)
async def reserve(
    promo_id: uuid.UUID,
    user: CurrentUser,
    tx: Tx,
    response: Response,
    limits: RateLimit,
    settings: AppSettings,
) -> ReservationOut:
    """Hold one unit for `RESERVATION_TTL_SECONDS` (60 s) → 201. A caller who already holds
    a live reservation on the promo gets it back (200). 409 `sold-out`, `promo-not-running`,
    `purchase-limit-reached`; 403 `not-eligible`."""
    await limits.hit(limits.assign, "reserve", user.id)
    async with tx.one_statement() as conn:
        result = await reservations.reserve(
            conn, promo_id, user.id, settings.reservation_ttl_seconds
        )
        code = status.HTTP_201_CREATED if result.created else status.HTTP_200_OK
        response.status_code = code
        location = None
        if result.created:
            location = f"{PREFIX}/reservations/{result.reservation.id}"
            response.headers["Location"] = location
        await tx.remember(conn, code, result.reservation, location)
    return result.reservation


@router.post(
    "/reservations/{reservation_id}/purchase",
    response_model=ReservationOut,
    responses=problems(*AUTH, 404, 409),
    tags=["reservations"],
)
async def purchase(reservation_id: uuid.UUID, user: CurrentUser, tx: Tx) -> ReservationOut:
    """Buy the held unit → `purchased` (again → the same 200). 409 `reservation-expired`
    (lapsed or cancelled), `promo-not-running` (cancelled or ended meanwhile)."""
    async with tx as conn:
        out = await reservations.purchase(conn, reservation_id, user.id)
        await tx.remember(conn, 200, out)
    return out


@router.post(
    "/reservations/{reservation_id}/cancel",
    response_model=ReservationOut,
    responses=problems(*AUTH, 404, 409),
    tags=["reservations"],
)
async def cancel_reservation(
    reservation_id: uuid.UUID, user: CurrentUser, tx: Tx
) -> ReservationOut:
    """Release the hold and its unit (a released one answers as it is); a purchased
    reservation is 409 `reservation-expired` (not held)."""
    async with tx as conn:
        out = await reservations.cancel(conn, reservation_id, user.id)
        await tx.remember(conn, 200, out)
    return out


@router.get(
    "/reservations/{reservation_id}",
    response_model=ReservationOut,
    responses=problems(*AUTH, 404),
    tags=["reservations"],
)
async def get_reservation(reservation_id: uuid.UUID, user: CurrentUser, tx: Tx) -> ReservationOut:
    """One of the caller's reservations; a lapsed hold reads `expired`."""
    async with tx as conn:
        return await reservations.get_reservation(conn, reservation_id, user.id)
