"""HTTP routes: register, token, me, users (admin), profile and location."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Form, Query, Request, Response, status

from app.api.deps import AdminUser, AppServices, Audit, CurrentUser, RateLimit, Session, Tokens
from app.auth import refresh, service
from app.auth.errors import BadCredentials
from app.auth.login import login
from app.auth.schemas import (
    LocationIn,
    ProfileIn,
    ProfileOut,
    RefreshIn,
    RegisterIn,
    RoleIn,
    TokenForm,
    TokenOut,
    UserOut,
)
from app.core.clientip import client_address
from app.core.db import raw_connection
from app.core.lockout import TooManyFailures
from app.core.openapi import AUTH, problems
from app.core.pagination import Cursor, Limit, Page, encode_cursor, uuid_cursor
from app.core.problems import problem_of
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
    services: AppServices,
) -> Response | TokenOut:
    """OAuth2 password flow: `username` (the email) and `password` as a form. Also returns
    a `refresh_token` for `POST /auth/refresh`. Failed logins count per account and per
    client address: past `LOCKOUT_MAX_FAILURES` both get 429 `too-many-failures`."""
    await limits.hit(limits.auth, "token", client_ip(request))
    address = client_address(request, services.lockouts.trusted_proxies)
    try:
        user = await login(session, services.lockouts, address, form.username, form.password)
    except (BadCredentials, TooManyFailures) as exc:
        return problem_of(request, exc)  # answered, not raised: the failure's count commits
    refresh_token = await refresh.issue(
        await raw_connection(session), user.id, services.settings.refresh_token_ttl_seconds
    )
    return TokenOut(
        access_token=tokens.issue(user.id, Role(user.role)),
        expires_in=tokens.ttl_seconds,
        refresh_token=refresh_token,
    )


@router.post("/auth/refresh", response_model=TokenOut, responses=problems(400, 401, 422, 503))
async def refresh_token(
    body: RefreshIn, session: Session, tokens: Tokens, request: Request, services: AppServices
) -> Response | TokenOut:
    """A new access token and a new refresh token for a refresh token, which is spent.
    Presenting a spent refresh token again is 401 and ends every session of its login."""
    try:
        rotated = await refresh.rotate(
            await raw_connection(session),
            body.refresh_token,
            services.settings.refresh_token_ttl_seconds,
        )
    except refresh.RefreshReused as exc:
        return problem_of(request, exc)  # answered, not raised: the revocation commits
    return TokenOut(
        access_token=tokens.issue(rotated.user_id, Role(rotated.role)),
        expires_in=tokens.ttl_seconds,
        refresh_token=rotated.refresh_token,
    )


@router.post(
    "/auth/logout",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=problems(400, 422, 503),
)
async def logout(body: RefreshIn, session: Session) -> None:
    """End the login the refresh token belongs to: it and every token rotated from it stop
    working (access tokens already issued run out at their `exp`). Always 204."""
    await refresh.revoke(await raw_connection(session), body.refresh_token)


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
    admin: AdminUser,
    session: Session,
    limit: Limit = 50,
    cursor: Cursor = None,
    email: Annotated[
        str | None,
        Query(
            min_length=3,
            max_length=320,
            pattern=r"^[^\x00-\x1f\s]+@[^\x00-\x1f\s]+$",
            description="Only the account with this email (any case): none or one item.",
            examples=["ana@example.com"],
        ),
    ] = None,
) -> Page[ProfileOut]:
    """Accounts, keyset-paginated by id; `email` finds one account by its email."""
    users = await service.list_users(session, limit + 1, uuid_cursor(cursor), email=email)
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
    user_id: uuid.UUID, body: RoleIn, admin: AdminUser, session: Session, audit: Audit
) -> ProfileOut:
    """Change a user's role; it takes effect when their current token expires (or at its
    next refresh)."""
    before = {"role": (await service.get_user(session, user_id)).role}
    out = ProfileOut.model_validate(await service.set_role(session, user_id, body.role))
    await audit.changed(session, "user.role", "user", user_id, before, {"role": out.role})
    return out
