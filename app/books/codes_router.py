"""HTTP routes on single codes (owner or admin; another user's code answers 404), the
caller's codes and the redemption history."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Body, Depends, Query, Response, status

from app.auth.deps import AdminUser, CurrentUser
from app.books import assign, history, redeem, service
from app.books.schemas import (
    Action,
    AssignIn,
    CodeOut,
    CodeStatus,
    HistoryEntry,
    LockedCodeOut,
    LockIn,
    RedeemIn,
    RedeemOut,
    RollbackIn,
    UnlockIn,
    ValidateIn,
    ValidateOut,
)
from app.books.types import Timestamp
from app.core.db import Session
from app.core.idempotency import Idempotent
from app.core.openapi import AUTH, problems
from app.core.pagination import (
    Cursor,
    Limit,
    Page,
    encode_cursor,
    int_cursor,
)
from app.core.problems import Forbidden
from app.core.ratelimit import RateLimits, get_rate_limits
from app.core.security import Principal

router = APIRouter(tags=["codes"])
RateLimit = Annotated[RateLimits, Depends(get_rate_limits)]
CODE_ERRORS = problems(*AUTH, 403, 404, 409)


def _owner(user: Principal) -> uuid.UUID | None:
    """Admins act on any code; everyone else only on their own."""
    return None if user.is_admin else user.id


@router.get("/codes/{code}", response_model=CodeOut, responses=problems(*AUTH, 404))
async def get_code(code: str, user: CurrentUser, session: Session) -> CodeOut:
    """A code as it reads now (a lapsed lock reads as `assigned`)."""
    return await service.get_code(session, code, _owner(user))


@router.post(
    "/codes/{code}/assign",
    status_code=status.HTTP_201_CREATED,
    response_model=CodeOut,
    responses=CODE_ERRORS,
)
async def assign_code(
    code: str,
    user: CurrentUser,
    session: Session,
    response: Response,
    limits: RateLimit,
    idem: Idempotent,
    body: Annotated[AssignIn | None, Body()] = None,
) -> CodeOut:
    """Claim this specific code (a user for themself, an admin for `user_id`).
    409 `code-unavailable`, `code-limit-reached`, `book-inactive`."""
    requested = body.user_id if body else None
    target = user.id if requested is None or requested == user.id else None
    if target is None:
        if not user.is_admin:
            raise Forbidden("Only an admin may assign a code to another user.")
        target = requested
    assert target is not None
    await limits.hit(limits.assign, "assign", str(user.id))
    out = await assign.assign_code(session, code, target, user.id)
    response.headers["Location"] = f"/api/v1/codes/{out.code}"
    await idem.remember(status.HTTP_201_CREATED, out)
    return out


@router.post("/codes/{code}/lock", response_model=LockedCodeOut, responses=CODE_ERRORS)
async def lock_code(
    code: str,
    user: CurrentUser,
    session: Session,
    idem: Idempotent,
    body: Annotated[LockIn | None, Body()] = None,
) -> LockedCodeOut:
    """Hold the code for checkout for `ttl_seconds` (default and maximum: the book's lock
    TTL). Locking a locked code is 409 `code-locked` unless `lock_id` is the live one, which
    extends the lock."""
    body = body or LockIn()
    out = await redeem.lock(
        session,
        code,
        owner=_owner(user),
        actor_id=user.id,
        ttl_seconds=body.ttl_seconds,
        lock_id=body.lock_id,
    )
    await idem.remember(status.HTTP_200_OK, out)
    return out


@router.post("/codes/{code}/unlock", response_model=CodeOut, responses=CODE_ERRORS)
async def unlock_code(
    code: str,
    user: CurrentUser,
    session: Session,
    idem: Idempotent,
    body: Annotated[UnlockIn | None, Body()] = None,
) -> CodeOut:
    """Release a lock: the owner needs the live `lock_id`, an admin none. Unlocking a code
    that is not locked is a harmless 200."""
    out = await redeem.unlock(
        session,
        code,
        owner=_owner(user),
        actor_id=user.id,
        lock_id=body.lock_id if body else None,
    )
    await idem.remember(status.HTTP_200_OK, out)
    return out


@router.post("/codes/{code}/redeem", response_model=RedeemOut, responses=CODE_ERRORS)
async def redeem_code(
    code: str,
    user: CurrentUser,
    session: Session,
    idem: Idempotent,
    body: Annotated[RedeemIn | None, Body()] = None,
) -> RedeemOut:
    """Use the code once (from `assigned`, or `locked` with its `lock_id`). 409
    `code-locked`, `code-not-assigned`, `redemption-limit-reached`,
    `user-redemption-limit-reached`, `book-inactive`."""
    body = body or RedeemIn()
    out = await redeem.redeem(
        session,
        code,
        owner=_owner(user),
        actor_id=user.id,
        lock_id=body.lock_id,
        order_ref=body.order_ref,
        metadata=body.metadata,
    )
    await idem.remember(status.HTTP_200_OK, out)
    return out


@router.post("/codes/{code}/validate", response_model=ValidateOut, responses=problems(*AUTH, 404))
async def validate_code(
    code: str,
    user: CurrentUser,
    session: Session,
    body: Annotated[ValidateIn | None, Body()] = None,
) -> ValidateOut:
    """Would redeeming work now? Changes nothing; names the problem redeem would raise."""
    slug = await redeem.validate(
        session, code, owner=_owner(user), lock_id=body.lock_id if body else None
    )
    return ValidateOut(redeemable=slug is None, problem=slug)


@router.post("/codes/{code}/rollback", response_model=CodeOut, responses=CODE_ERRORS)
async def rollback_code(
    code: str, body: RollbackIn, admin: AdminUser, session: Session, idem: Idempotent
) -> CodeOut:
    """Reverse one redemption (order cancelled, payment failed): `redemptions` - 1 and the
    code is usable again. 409 `not-redeemed` if unknown or already rolled back."""
    out = await redeem.rollback(
        session, code, redemption_id=body.redemption_id, actor_id=admin.id, reason=body.reason
    )
    await idem.remember(status.HTTP_200_OK, out)
    return out


@router.get("/me/codes", response_model=Page[CodeOut], responses=problems(*AUTH), tags=["me"])
async def my_codes(
    user: CurrentUser,
    session: Session,
    book_id: uuid.UUID | None = None,
    status_: Annotated[CodeStatus | None, Query(alias="status")] = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Page[CodeOut]:
    """The caller's codes, optionally of one book and in one status."""
    rows = await service.list_codes(
        session,
        book_id=book_id,
        user_id=user.id,
        status=status_,
        limit=limit + 1,
        after=int_cursor(cursor),
    )
    page = rows[:limit]
    return Page[CodeOut](
        items=[c for _, c in page],
        next_cursor=encode_cursor(page[-1][0]) if len(rows) > limit else None,
    )


def _history_page(entries: list[HistoryEntry], limit: int) -> Page[HistoryEntry]:
    page = entries[:limit]
    return Page[HistoryEntry](
        items=page, next_cursor=encode_cursor(page[-1].id) if len(entries) > limit else None
    )


@router.get(
    "/history", response_model=Page[HistoryEntry], responses=problems(*AUTH, 403), tags=["history"]
)
async def list_history(
    admin: AdminUser,
    session: Session,
    book_id: uuid.UUID | None = None,
    code: Annotated[str | None, Query(max_length=64, pattern=r"^[A-Za-z0-9_-]+$")] = None,
    user_id: uuid.UUID | None = None,
    action: Action | None = None,
    since: Annotated[Timestamp | None, Query()] = None,
    until: Annotated[Timestamp | None, Query()] = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Page[HistoryEntry]:
    """Every transition, newest first: assigned, locked, unlocked, redeemed, rolled_back."""
    filters = history.HistoryFilter(book_id, code, user_id, action, since, until)
    entries = await history.list_history(session, filters, limit + 1, int_cursor(cursor))
    return _history_page(entries, limit)


@router.get(
    "/me/history", response_model=Page[HistoryEntry], responses=problems(*AUTH), tags=["me"]
)
async def my_history(
    user: CurrentUser,
    session: Session,
    book_id: uuid.UUID | None = None,
    action: Action | None = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Page[HistoryEntry]:
    """The caller's own history, newest first."""
    filters = history.HistoryFilter(book_id=book_id, user_id=user.id, action=action)
    entries = await history.list_history(session, filters, limit + 1, int_cursor(cursor))
    return _history_page(entries, limit)
