"""HTTP routes: register, token, me, users (admin), profile and location."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Form, Request, Response, status

from app.api.deps import AdminUser, CurrentUser, RateLimit, Session, Tokens
from app.auth import service
from app.auth.schemas import (
    LocationIn,
    ProfileIn,
    ProfileOut,
    RegisterIn,
    RoleIn,
    TokenForm,
    TokenOut,
    UserOut,
)
from app.core.openapi import AUTH, problems
from app.core.pagination import Cursor, Limit, Page, encode_cursor, uuid_cursor
from app.core.ratelimit import client_ip
from app.core.security import Role

router = APIRouter(tags=["auth"])


@router.post(
    "/auth/register",
    status_code=status.HTTP_201_CREATED,
    response_model=UserOut,
    responses=problems(400, 409, 422, 429, 503),
)
async def register(
    body: RegisterIn, session: Session, request: Request, response: Response, limits: RateLimit
) -> UserOut:
    """Create an account with role `user`."""
    await limits.hit(limits.auth, "register", client_ip(request))
    user = await service.register(session, body.email, body.password)
    response.headers["Location"] = f"/api/v1/users/{user.id}"
    return UserOut.model_validate(user)


@router.post("/auth/token", response_model=TokenOut, responses=problems(400, 401, 422, 429, 503))
async def token(
    form: Annotated[TokenForm, Form()],
    session: Session,
    tokens: Tokens,
    request: Request,
    limits: RateLimit,
) -> TokenOut:
    """OAuth2 password flow: `username` (the email) and `password` as a form."""
    await limits.hit(limits.auth, "token", client_ip(request))
    user = await service.authenticate(session, form.username, form.password)
    return TokenOut(
        access_token=tokens.issue(user.id, Role(user.role)), expires_in=tokens.ttl_seconds
    )


@router.get("/auth/me", response_model=ProfileOut, responses=problems(*AUTH, 404))
async def me(user: CurrentUser, session: Session) -> ProfileOut:
    """The caller's account and profile."""
    return ProfileOut.model_validate(await service.get_user(session, user.id))


@router.put("/me/location", response_model=ProfileOut, responses=problems(*AUTH, 404), tags=["me"])
async def put_location(body: LocationIn, user: CurrentUser, session: Session) -> ProfileOut:
    """Record the caller's last known location (used for promo eligibility)."""
    return ProfileOut.model_validate(
        await service.set_location(session, user.id, body.lat, body.lng)
    )


@router.put("/me/profile", response_model=ProfileOut, responses=problems(*AUTH, 404), tags=["me"])
async def put_profile(body: ProfileIn, user: CurrentUser, session: Session) -> ProfileOut:
    """Update birth date, tags and time zone (the notification day is the local day)."""
    updated = await service.update_profile(
        session,
        user.id,
        fields=body.model_fields_set,
        birth_date=body.birth_date,
        tags=body.tags,
        timezone=body.timezone,
    )
    return ProfileOut.model_validate(updated)


@router.get(
    "/users", response_model=Page[ProfileOut], responses=problems(*AUTH, 403), tags=["users"]
)
async def list_users(
    admin: AdminUser, session: Session, limit: Limit = 50, cursor: Cursor = None
) -> Page[ProfileOut]:
    """Accounts, keyset-paginated by id."""
    users = await service.list_users(session, limit + 1, uuid_cursor(cursor))
    page = users[:limit]
    next_cursor = encode_cursor(page[-1].id) if len(users) > limit else None
    return Page[ProfileOut](
        items=[ProfileOut.model_validate(u) for u in page], next_cursor=next_cursor
    )


@router.get(
    "/users/{user_id}",
    response_model=ProfileOut,
    responses=problems(*AUTH, 403, 404),
    tags=["users"],
)
async def get_user(user_id: uuid.UUID, admin: AdminUser, session: Session) -> ProfileOut:
    """One account with its profile."""
    return ProfileOut.model_validate(await service.get_user(session, user_id))


@router.patch(
    "/users/{user_id}",
    response_model=ProfileOut,
    responses=problems(*AUTH, 403, 404),
    tags=["users"],
)
async def patch_user(
    user_id: uuid.UUID, body: RoleIn, admin: AdminUser, session: Session
) -> ProfileOut:
    """Change a user's role; it takes effect when their current token expires."""
    return ProfileOut.model_validate(await service.set_role(session, user_id, body.role))
