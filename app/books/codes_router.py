"""HTTP routes that hand out and use codes: assign (at random or by code), lock, unlock,
redeem, validate, roll back, read one. Owner or admin; another user's code answers 404.

These are the hot paths: `LeanRoute` calls them without per-request dependency solving,
and each runs in one `Tx` (a transaction on a bare asyncpg connection)."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Annotated

import asyncpg
from fastapi import APIRouter, Body, Response, status

from app.api.deps import AdminUser, AppServices, Audit, CurrentUser, Guesses, RateLimit, Tx
from app.api.services import Services
from app.books import assign, checksum, redeem, service
from app.books.errors import CodeMistyped
from app.books.schemas import (
    AssignIn,
    CodeOut,
    LockedCodeOut,
    LockIn,
    RedeemIn,
    RedeemOut,
    RollbackIn,
    UnlockIn,
    ValidateIn,
    ValidateOut,
)
from app.core.lean import LeanRoute
from app.core.openapi import AUTH, problems
from app.core.problems import Forbidden, NotFound
from app.core.ratelimit import RateLimits
from app.core.security import Principal
from app.core.transaction import Transaction, retry_transient

router = APIRouter(tags=["codes"], route_class=LeanRoute)
CODE_ERRORS = problems(*AUTH, 403, 404, 409)
# Failed lookups a guessing caller makes; too many lock the caller out (app/core/lockout.py).
GUESSES = (NotFound, CodeMistyped)


async def _refuse_mistyped(services: Services, conn: asyncpg.Connection, code: str) -> None:
    """422 `code-mistyped` for a code whose check character is wrong, before any code table
    is read (the claimed prefixes are cached; no query while the cache is fresh)."""
    checksum.refuse_mistyped(await services.checksum_prefixes.get(conn), code)


def _owner(user: Principal) -> uuid.UUID | None:
    """Admins act on any code; everyone else only on their own."""
    return None if user.is_admin else user.id


@router.get("/codes/{code}", response_model=CodeOut, responses=problems(*AUTH, 404))
async def get_code(code: str, user: CurrentUser, tx: Tx) -> CodeOut:
    """A code as it reads now (a lapsed lock reads as `assigned`)."""
    async with tx as conn:
        return await service.get_code(conn, code, _owner(user))


@router.post(
    "/codes/{code}/assign",
    status_code=status.HTTP_201_CREATED,
    response_model=CodeOut,
    responses=CODE_ERRORS,
)
async def assign_code(
    code: str,
    user: CurrentUser,
    tx: Tx,
    response: Response,
    limits: RateLimit,
    services: AppServices,
    guesses: Guesses,
    body: Annotated[AssignIn | None, Body()] = None,
) -> CodeOut:
    """Claim this specific code (a user for themself, an admin for `user_id`).
    409 `code-unavailable`, `code-limit-reached`, `book-inactive`; 422 `code-mistyped`;
    429 `too-many-failures`."""

    async def claim(conn: asyncpg.Connection, target: uuid.UUID) -> CodeOut:
        await _refuse_mistyped(services, conn, code)
        return await assign.assign_code(conn, code, target, user.id)

    async with guesses.watch(*GUESSES):
        return await _assign(user, tx, response, limits, body, claim)


@router.post("/codes/{code}/lock", response_model=LockedCodeOut, responses=CODE_ERRORS)
async def lock_code(
    code: str,
    user: CurrentUser,
    tx: Tx,
    guesses: Guesses,
    services: AppServices,
    body: Annotated[LockIn | None, Body()] = None,
) -> LockedCodeOut:
    """Hold the code for checkout for `ttl_seconds` (default and maximum: the book's lock
    TTL). Locking a locked code is 409 `code-locked` unless `lock_id` is the live one, which
    extends the lock. 422 `code-mistyped`."""
    body = body or LockIn()
    async with guesses.watch(*GUESSES):
        async with tx as conn:
            await _refuse_mistyped(services, conn, code)
            out = await redeem.lock(
                conn,
                code,
                owner=_owner(user),
                actor_id=user.id,
                ttl_seconds=body.ttl_seconds,
                lock_id=body.lock_id,
            )
            await tx.remember(conn, status.HTTP_200_OK, out)
        return out


@router.post("/codes/{code}/unlock", response_model=CodeOut, responses=CODE_ERRORS)
async def unlock_code(
    code: str,
    user: CurrentUser,
    tx: Tx,
    guesses: Guesses,
    body: Annotated[UnlockIn | None, Body()] = None,
) -> CodeOut:
    """Release a lock: the owner needs the live `lock_id`, an admin none. Unlocking a code
    that is not locked is a harmless 200."""
    async with guesses.watch(*GUESSES):
        async with tx as conn:
            out = await redeem.unlock(
                conn,
                code,
                owner=_owner(user),
                actor_id=user.id,
                lock_id=body.lock_id if body else None,
            )
            await tx.remember(conn, status.HTTP_200_OK, out)
        return out


@router.post("/codes/{code}/redeem", response_model=RedeemOut, responses=CODE_ERRORS)
async def redeem_code(
    code: str,
    user: CurrentUser,
    tx: Tx,
    guesses: Guesses,
    services: AppServices,
    body: Annotated[RedeemIn | None, Body()] = None,
) -> RedeemOut:
    """Use the code once (from `assigned`, or `locked` with its `lock_id`). 409
    `code-locked`, `code-not-assigned`, `redemption-limit-reached`,
    `user-redemption-limit-reached`, `book-inactive`; 422 `code-mistyped`."""
    body = body or RedeemIn()
    async with guesses.watch(*GUESSES):
        async with tx as conn:
            await _refuse_mistyped(services, conn, code)
            out = await redeem.redeem(
                conn,
                code,
                owner=_owner(user),
                actor_id=user.id,
                lock_id=body.lock_id,
                order_ref=body.order_ref,
                metadata=body.metadata,
            )
            await tx.remember(conn, status.HTTP_200_OK, out)
        return out


@router.post("/codes/{code}/validate", response_model=ValidateOut, responses=problems(*AUTH, 404))
async def validate_code(
    code: str,
    user: CurrentUser,
    tx: Tx,
    guesses: Guesses,
    services: AppServices,
    body: Annotated[ValidateIn | None, Body()] = None,
) -> ValidateOut:
    """Would redeeming work now? Changes nothing; names the problem redeem would raise.
    422 `code-mistyped` for a code whose check character is wrong."""
    async with guesses.watch(*GUESSES):
        async with tx as conn:
            await _refuse_mistyped(services, conn, code)
            slug = await redeem.validate(
                conn, code, owner=_owner(user), lock_id=body.lock_id if body else None
            )
        return ValidateOut(redeemable=slug is None, problem=slug)


@router.post("/codes/{code}/rollback", response_model=CodeOut, responses=CODE_ERRORS)
async def rollback_code(
    code: str, body: RollbackIn, admin: AdminUser, tx: Tx, audit: Audit
) -> CodeOut:
    """Reverse one redemption (order cancelled, payment failed): `redemptions` - 1 and the
    code is usable again. 409 `not-redeemed` if unknown or already rolled back."""
    async with tx as conn:
        out = await redeem.rollback(
            conn, code, redemption_id=body.redemption_id, actor_id=admin.id, reason=body.reason
        )
        after = {"redemption_id": body.redemption_id, "reason": body.reason, "code": out}
        await audit.record(conn, "code.rollback", "code", out.code, after=after)
        await tx.remember(conn, status.HTTP_200_OK, out)
    return out


@router.post(
    "/books/{book_id}/assign",
    status_code=status.HTTP_201_CREATED,
    response_model=CodeOut,
    responses=problems(*AUTH, 403, 404, 409),
    tags=["books"],
)
async def assign_random(
    book_id: uuid.UUID,
    user: CurrentUser,
    tx: Tx,
    response: Response,
    limits: RateLimit,
    services: AppServices,
    body: Annotated[AssignIn | None, Body()] = None,
) -> CodeOut:
    """A random free code of the book: a user assigns to themself, an admin to `user_id`.
    409 `book-exhausted`, `code-limit-reached`, `book-inactive`."""
    batches = services.assign_batches
    if batches is None or tx.idempotency.key is not None:

        async def claim(conn: asyncpg.Connection, target: uuid.UUID) -> CodeOut:
            return await assign.assign_random(conn, book_id, target, user.id)

        return await _assign(user, tx.one_statement(), response, limits, body, claim)

    # Coalesced with the book's other concurrent assigns (app/core/coalesce.py); a request
    # that leads its batch runs it in its own transaction.
    target = _target_user(user.id, user.is_admin, body.user_id if body else None)
    await limits.hit(limits.assign, "assign", user.id)

    async def run(requests: Sequence[tuple[uuid.UUID, uuid.UUID]]) -> list[CodeOut | Exception]:
        return await retry_transient(
            tx.one_statement(), lambda conn: assign.assign_random_batch(conn, book_id, requests)
        )

    out: CodeOut = await batches.submit(book_id, (target, user.id), run)
    response.headers["Location"] = f"/api/v1/codes/{out.code}"
    return out


async def _assign(
    user: Principal,
    tx: Transaction,
    response: Response,
    limits: RateLimits,
    body: AssignIn | None,
    claim: Callable[[asyncpg.Connection, uuid.UUID], Awaitable[CodeOut]],
) -> CodeOut:
    """Both assigns: who gets the code, the rate limit, the claim, `Location`, idempotency."""
    target = _target_user(user.id, user.is_admin, body.user_id if body else None)
    await limits.hit(limits.assign, "assign", user.id)
    async with tx as conn:
        out = await claim(conn, target)
        location = response.headers["Location"] = f"/api/v1/codes/{out.code}"
        await tx.remember(conn, status.HTTP_201_CREATED, out, location)
    return out


def _target_user(caller: uuid.UUID, is_admin: bool, requested: uuid.UUID | None) -> uuid.UUID:
    if requested is None or requested == caller:
        return caller
    if not is_admin:
        raise Forbidden("Only an admin may assign a code to another user.")
    return requested
