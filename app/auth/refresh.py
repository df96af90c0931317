"""Rotating refresh tokens. A token is `<id>.<secret>`; the table keeps SHA-256 of the
secret. Refreshing spends the token (a conditional UPDATE, so of two concurrent refreshes
with one token exactly one wins) and issues the next of its family; presenting a spent token
again means two parties hold it, so the whole family is revoked and both must log in again.
Times are the database's."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass

import asyncpg

from app.core.outbox import Conn
from app.core.problems import Unauthenticated


@dataclass(frozen=True, slots=True)
class Rotated:
    user_id: uuid.UUID
    role: str
    refresh_token: str


class RefreshReused(Unauthenticated):
    """A spent refresh token came back: its family is revoked (commit that, then answer)."""


def _split(token: str) -> tuple[uuid.UUID, bytes] | None:
    head, _, secret = token.partition(".")
    try:
        return uuid.UUID(head), hashlib.sha256(secret.encode()).digest()
    except ValueError:
        return None


_ISSUE = """
INSERT INTO refresh_tokens (id, family_id, user_id, secret_hash, valid_until)
VALUES ($1, $2, $3, $4, now() + $5 * interval '1 second')
"""


async def issue(
    conn: asyncpg.Connection, user_id: uuid.UUID, ttl_seconds: int, family: uuid.UUID | None = None
) -> str:
    """A new refresh token for the user, of `family` or of a new one."""
    token_id, secret = uuid.uuid4(), secrets.token_urlsafe(32)
    digest = hashlib.sha256(secret.encode()).digest()
    await conn.execute(_ISSUE, token_id, family or token_id, user_id, digest, ttl_seconds)
    return f"{token_id}.{secret}"


_SPEND = """
UPDATE refresh_tokens t SET used_at = clock_timestamp()
FROM users u
WHERE t.id = $1 AND t.secret_hash = $2
  AND t.used_at IS NULL AND t.revoked_at IS NULL AND t.valid_until > now()
  AND u.id = t.user_id
RETURNING t.family_id, t.user_id, u.role
"""

_READ = "SELECT family_id, secret_hash, used_at, revoked_at FROM refresh_tokens WHERE id = $1"

_REVOKE = """
UPDATE refresh_tokens SET revoked_at = clock_timestamp()
WHERE family_id = $1 AND revoked_at IS NULL
"""


async def rotate(conn: asyncpg.Connection, token: str, ttl_seconds: int) -> Rotated:
    """Spend the token and issue the next of its family. 401 if it is unknown, expired or
    revoked; `RefreshReused` (401) after revoking the family if it was spent already."""
    parts = _split(token)
    if parts is None:
        raise Unauthenticated("The refresh token is not valid.")
    token_id, digest = parts
    row = await conn.fetchrow(_SPEND, token_id, digest)
    if row is not None:
        fresh = await issue(conn, row["user_id"], ttl_seconds, row["family_id"])
        return Rotated(row["user_id"], row["role"], fresh)
    known = await conn.fetchrow(_READ, token_id)
    if known is None or not hmac.compare_digest(known["secret_hash"], digest):
        raise Unauthenticated("The refresh token is not valid.")
    if known["used_at"] is not None and known["revoked_at"] is None:
        await conn.execute(_REVOKE, known["family_id"])
        raise RefreshReused("The refresh token was already used; every session of it ended.")
    raise Unauthenticated("The refresh token has expired or was revoked.")


async def revoke(conn: asyncpg.Connection, token: str) -> bool:
    """Revoke the token's family (logout); False if the token is not one of ours."""
    parts = _split(token)
    if parts is None:
        return False
    known = await conn.fetchrow(_READ, parts[0])
    if known is None or not hmac.compare_digest(known["secret_hash"], parts[1]):
        return False
    await conn.execute(_REVOKE, known["family_id"])
    return True


_PURGE = """
WITH doomed AS MATERIALIZED (
    SELECT id FROM refresh_tokens WHERE valid_until < now() ORDER BY valid_until LIMIT $1
)
DELETE FROM refresh_tokens t USING doomed d WHERE t.id = d.id
"""


async def purge_expired(conn: Conn, limit: int) -> int:
    """Delete up to `limit` expired refresh tokens (a family's reuse check needs its spent
    tokens only until they expire); returns how many went."""
    status: str = await conn.execute(_PURGE, limit)
    return int(status.rsplit(" ", 1)[-1])
