"""Erasure and export of a person's data (docs/privacy.md says what is kept and why).

Erasure runs in one transaction: live locks and held reservations are released (a lock's
release is written to the history like any unlock), the inbox, segment memberships,
sessions, stored idempotent responses and lockout counts are deleted, and the profile is
wiped. The user row stays under its random id, which nothing links to the person any more,
so the redemption history, purchases, counters and per-user limits still add up, and the
sealed logs (history and purchase log), which name the person only by that id, are left
as they are: their chains still verify."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg

from app.books.rules import LOCK_LIVE
from app.core.problems import NotFound
from app.promos import purchase_log, reservations

_TARGET = "SELECT id FROM users WHERE id = $1 AND erased_at IS NULL FOR UPDATE"

_RELEASE_LOCKS = f"""
WITH released AS (
    UPDATE codes c SET status = 'assigned', locked_until = NULL, lock_id = NULL,
                       updated_at = now()
    WHERE c.user_id = $1 AND {LOCK_LIVE}
    RETURNING c.id, c.book_id, c.user_id
)
INSERT INTO redemption_history (code_id, book_id, user_id, action, actor_id, details)
SELECT id, book_id, user_id, 'unlocked', $2, '{{"reason": "erasure"}}'::jsonb FROM released
"""

_HELD = "SELECT id FROM reservations WHERE user_id = $1 AND status = 'held' ORDER BY id"

_DELETES = {
    "notifications": "DELETE FROM notifications WHERE user_id = $1",
    "notification_audience": "DELETE FROM notification_audience WHERE user_id = $1",
    "segment_memberships": "DELETE FROM segment_members WHERE user_id = $1",
    "sessions": "DELETE FROM refresh_tokens WHERE user_id = $1",
    "stored_responses": "DELETE FROM idempotency_keys WHERE user_id = $1",
    "lockouts": "DELETE FROM lockouts WHERE key = 'user:' || $1::uuid::text",
}

_WIPE = """
UPDATE users SET email = 'erased-' || id || '@erased.invalid', password_hash = NULL,
                 external_id = NULL, role = 'user', lat = NULL, lng = NULL,
                 location_updated_at = NULL, birth_date = NULL, tags = '{}',
                 timezone = 'UTC', erased_at = now()
WHERE id = $1
"""


def _count(status: str) -> int:
    return int(status.rsplit(" ", 1)[-1])


async def erase(
    conn: asyncpg.Connection, user_id: uuid.UUID, actor_id: uuid.UUID
) -> dict[str, int]:
    """Erase the person; what was released or deleted, by kind. 404 if unknown or erased."""
    if await conn.fetchval(_TARGET, user_id) is None:
        raise NotFound(f"No user {user_id}.")
    done = {"locks_released": _count(await conn.execute(_RELEASE_LOCKS, user_id, actor_id))}
    held = [r["id"] for r in await conn.fetch(_HELD, user_id)]
    for reservation_id in held:
        await reservations.cancel(conn, reservation_id, user_id)
    done["reservations_released"] = len(held)
    for kind, sql in _DELETES.items():
        done[kind] = _count(await conn.execute(sql, user_id))
    await conn.execute(_WIPE, user_id)
    return done


_EXPORT: dict[str, str] = {
    "codes": """
        SELECT c.code, c.book_id, b.name AS book_name, c.status, c.assigned_at,
               c.locked_until, c.redemptions
        FROM codes c JOIN books b ON b.id = c.book_id WHERE c.user_id = $1 ORDER BY c.id""",
    "history": """
        SELECT h.id, h.at, h.action, c.code, h.book_id, h.details
        FROM redemption_history h JOIN codes c ON c.book_id = h.book_id AND c.id = h.code_id
        WHERE h.user_id = $1 ORDER BY h.id""",
    "reservations": """
        SELECT id, promo_id, status, expires_at, created_at, updated_at
        FROM reservations WHERE user_id = $1 ORDER BY created_at, id""",
    "purchases": purchase_log.MINE,
    "notifications": """
        SELECT id, promo_id, day, status, created_at, read_at
        FROM notifications WHERE user_id = $1 ORDER BY id""",
    "segments": """
        SELECT s.id, s.name, m.created_at AS added_at
        FROM segment_members m JOIN segments s ON s.id = m.segment_id
        WHERE m.user_id = $1 ORDER BY m.created_at""",
    "sessions": """
        SELECT family_id, created_at, valid_until, used_at, revoked_at
        FROM refresh_tokens WHERE user_id = $1 ORDER BY created_at""",
    "admin_actions": """
        SELECT id, at, action, target_type, target_id FROM admin_audit
        WHERE actor_id = $1 ORDER BY id""",
}

_PROFILE = """
SELECT id, email, role, created_at, lat, lng, location_updated_at, birth_date, tags, timezone
FROM users WHERE id = $1 AND erased_at IS NULL
"""


async def export(conn: asyncpg.Connection, user_id: uuid.UUID) -> dict[str, Any]:
    """Everything stored about the person, by kind (no password hash, no token secrets)."""
    profile = await conn.fetchrow(_PROFILE, user_id)
    if profile is None:
        raise NotFound(f"No user {user_id}.")
    out: dict[str, Any] = {"profile": dict(profile)}
    for kind, sql in _EXPORT.items():
        out[kind] = [dict(r) for r in await conn.fetch(sql, user_id)]
    return out
