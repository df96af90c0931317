"""Users: registration, credentials, roles, profile, and OIDC provisioning."""

from __future__ import annotations

import uuid
from datetime import date

from sqlalchemy import ColumnElement, select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth.errors import BadCredentials, EmailTaken
from app.auth.models import User
from app.core.crud import get_or_404, page_by_id
from app.core.problems import NotFound
from app.core.security import Role, hash_password, verify_and_update_password


def normalise_email(email: str) -> str:
    return email.strip().lower()


async def register(session: AsyncSession, email: str, password: str) -> User:
    """Create a user with role `user`; 409 `email-taken` if the email is in use."""
    password_hash = await hash_password(password)
    stmt = (
        insert(User)
        .values(email=normalise_email(email), password_hash=password_hash)
        .on_conflict_do_nothing(index_elements=[User.email])
        .returning(User)
    )
    user = (await session.execute(stmt)).scalar_one_or_none()
    if user is None:
        raise EmailTaken(f"{email} is already registered.")
    return user


async def authenticate(session: AsyncSession, email: str, password: str) -> User:
    """The user with these credentials, else 401 (same work whether the email exists). A
    hash made with older parameters is replaced by one with the current ones."""
    user = (
        await session.execute(select(User).where(User.email == normalise_email(email)))
    ).scalar_one_or_none()
    ok, new_hash = await verify_and_update_password(password, user.password_hash if user else None)
    if user is None or not ok:
        raise BadCredentials("Email or password is wrong.")
    if new_hash is not None:
        user.password_hash = new_hash
        await session.flush()
    return user


async def get_user(session: AsyncSession, user_id: uuid.UUID) -> User:
    """A user; an erased one is gone (404)."""
    user = await get_or_404(session, User, user_id, "user")
    if user.erased_at is not None:
        raise NotFound(f"No user {user_id}.")
    return user


async def list_users(
    session: AsyncSession, limit: int, after: uuid.UUID | None, *, email: str | None = None
) -> list[User]:
    """Users in id order, keyset-paginated; with `email`, only the one it names (any case)."""
    where: list[ColumnElement[bool]] = [User.erased_at.is_(None)]
    if email is not None:
        where.append(User.email == normalise_email(email))
    return await page_by_id(session, User, limit, after, *where)


async def set_role(session: AsyncSession, user_id: uuid.UUID, role: Role) -> User:
    user = await get_user(session, user_id)
    user.role = role.value
    await session.flush()
    return user


async def set_location(session: AsyncSession, user_id: uuid.UUID, lat: float, lng: float) -> User:
    user = await get_user(session, user_id)
    user.lat, user.lng = lat, lng
    user.location_updated_at = (await session.execute(text("SELECT now()"))).scalar_one()
    await session.flush()
    return user


async def update_profile(
    session: AsyncSession,
    user_id: uuid.UUID,
    *,
    fields: set[str],
    birth_date: date | None,
    tags: list[str] | None,
    timezone: str | None,
) -> User:
    """Update only the fields the client sent (`fields`)."""
    user = await get_user(session, user_id)
    if "birth_date" in fields:
        user.birth_date = birth_date
    if "tags" in fields:
        user.tags = sorted(set(tags or []))
    if "timezone" in fields:
        user.timezone = timezone or "UTC"
    await session.flush()
    return user


async def ensure_admin(session: AsyncSession, email: str, password: str) -> tuple[User, bool]:
    """Create the admin, or promote an existing account; returns (user, created)."""
    existing = (
        await session.execute(select(User).where(User.email == normalise_email(email)))
    ).scalar_one_or_none()
    if existing is not None:
        if existing.role != Role.admin.value:
            existing.role = Role.admin.value
            await session.flush()
        return existing, False
    try:
        user = await register(session, email, password)
    except (EmailTaken, IntegrityError):  # a concurrent start created it
        return await ensure_admin(session, email, password)
    user.role = Role.admin.value
    await session.flush()
    return user, True


async def provision_external(
    session: AsyncSession, sub: str, email: str | None, role: Role
) -> User:
    """The local user for an external OIDC subject, created on first use."""
    values = {"external_id": sub, "role": role.value}
    stmt = insert(User).on_conflict_do_update(
        index_elements=[User.external_id], set_={"role": role.value}
    )
    try:
        async with session.begin_nested():
            email_value = normalise_email(email or f"{sub}@external")
            return (
                await session.execute(stmt.values(**values, email=email_value).returning(User))
            ).scalar_one()
    except IntegrityError:  # the email belongs to a local account: keep them apart
        return (
            await session.execute(stmt.values(**values, email=f"{sub}@external").returning(User))
        ).scalar_one()
