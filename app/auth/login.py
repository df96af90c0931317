"""Password logins, throttled like code lookups: failures count per account and per client
address (app/core/lockout.py), and past the threshold both answer 429 `too-many-failures`."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from app.auth.errors import BadCredentials
from app.auth.models import User
from app.auth.service import authenticate, normalise_email
from app.core.db import raw_connection
from app.core.lockout import GuessWatch, Lockouts, lend


def login_keys(email: str, address: str) -> tuple[str, str]:
    return f"account:{normalise_email(email)}", f"ip:{address}"


async def login(
    session: AsyncSession, lockouts: Lockouts, address: str, email: str, password: str
) -> User:
    """The user with these credentials. A failure is counted in the session's transaction:
    the caller must commit it although this raises (answer the problem without raising)."""
    watch = GuessWatch(lockouts, login_keys(email, address), lend(await raw_connection(session)))
    async with watch.watch(BadCredentials):
        return await authenticate(session, email, password)
