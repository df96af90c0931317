"""HTTP routes of reservations: reserve, purchase, cancel and read one. These are the hot
paths: `LeanRoute` calls them without per-request dependency solving, and each runs in one
`Tx` (a transaction on a bare asyncpg connection). The caller's list is in `router`."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from fastapi import APIRouter, Response, status

from app.api.deps import AppServices, AppSettings, CurrentUser, RateLimit, Tx
from app.core.lean import LeanRoute
from app.core.openapi import AUTH, problems
from app.core.transaction import retry_transient
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
    services: AppServices,
) -> ReservationOut:
    """Hold one unit for `RESERVATION_TTL_SECONDS` (60 s) → 201. A caller who already holds
    a live reservation on the promo gets it back (200). 409 `sold-out`, `promo-not-running`,
    `purchase-limit-reached`; 403 `not-eligible`."""
    await limits.hit(limits.assign, "reserve", user.id)
    ttl = settings.reservation_ttl_seconds
    batches = services.reserve_batches
    if batches is not None and tx.idempotency.key is None:
        # Coalesced with the promo's other concurrent reserves (app/core/coalesce.py); a
        # request that leads its batch runs it in its own transaction.
        async def run(users: Sequence[uuid.UUID]) -> list[reservations.Reserved | Exception]:
            return await retry_transient(
                tx.one_statement(),
                lambda conn: reservations.reserve_batch(conn, promo_id, users, ttl),
            )

        result: reservations.Reserved = await batches.submit(promo_id, user.id, run)
        _answer(response, result)
        return result.reservation
    async with tx.one_statement() as conn:
        result = await reservations.reserve(conn, promo_id, user.id, ttl)
        code, location = _answer(response, result)
        await tx.remember(conn, code, result.reservation, location)
    return result.reservation


def _answer(response: Response, result: reservations.Reserved) -> tuple[int, str | None]:
    """201 with `Location` for a new hold, 200 for the caller's live one again."""
    if not result.created:
        response.status_code = status.HTTP_200_OK
        return status.HTTP_200_OK, None
    location = f"{PREFIX}/reservations/{result.reservation.id}"
    response.status_code = status.HTTP_201_CREATED
    response.headers["Location"] = location
    return status.HTTP_201_CREATED, location


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
