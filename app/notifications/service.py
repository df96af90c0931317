"""Inbox and dead-letter operations (the request's session; never commits)."""

from __future__ import annotations

import uuid
from datetime import date
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.problems import Conflict, NotFound
from app.notifications.schemas import DeadLetterOut, NotificationOut, NotificationStatus

_COLUMNS = """
n.id, n.promo_id, p.title, n.day, n.status, n.created_at, n.read_at
"""
_PROMO = "LEFT JOIN promos p ON p.id = n.promo_id"

# What the user needs to act on a notification: the promo's price, the product's regular
# price and currency, the store and the promo's end. Read once per page for its distinct
# promos (a user's page mostly names different promos), so the inbox query stays one index
# walk of the user's own rows.
_OFFERS = text(
    """
    SELECT p.id AS promo_id, p.promo_price_cents, pr.price_cents, pr.currency,
           s.name AS store_name, p.ends_at
    FROM promos p
    JOIN products pr ON pr.id = p.product_id
    JOIN stores s ON s.id = pr.store_id
    WHERE p.id = ANY(CAST(:ids AS uuid[]))
    """
)

# One notification per user per day, so the unique (user_id, day) index orders the inbox.
_INBOX = text(
    f"""
    SELECT {_COLUMNS}
    FROM notifications n {_PROMO}
    WHERE n.user_id = :user_id
      AND (CAST(:before AS date) IS NULL OR n.day < CAST(:before AS date))
      AND (CAST(:status AS text) IS NULL OR n.status = CAST(:status AS text))
    ORDER BY n.day DESC
    LIMIT :limit
    """
)

_MARK_READ = text(
    f"""
    WITH n AS (
        UPDATE notifications SET status = 'read', read_at = coalesce(read_at, now())
        WHERE id = :id AND user_id = :user_id
        RETURNING *
    )
    SELECT {_COLUMNS} FROM n {_PROMO}
    """
)

_SINCE = text(
    f"""
    SELECT {_COLUMNS}
    FROM notifications n {_PROMO}
    WHERE n.user_id = :user_id AND n.id > :after
    ORDER BY n.id
    LIMIT :limit
    """
)

# The user's own rows, through the (user_id, day) index. Written as max(id) over the table,
# the planner walked the primary key backwards until it met the user's newest row: the whole
# table for a user who has none. OFFSET 0 keeps the sub-select from being flattened into it.
_LATEST_ID = text(
    "SELECT coalesce(max(n.id), 0) FROM"
    " (SELECT id FROM notifications WHERE user_id = :u OFFSET 0) AS n"
)

_DEAD_COLUMNS = """
id, topic, status, payload ->> 'promo_id' AS promo_id,
coalesce(jsonb_array_length(CASE WHEN jsonb_typeof(payload -> 'ids') = 'array'
                                 THEN payload -> 'ids' END), 0) AS notifications,
attempts, max_attempts, last_error, run_at, created_at, updated_at
"""


def _notification(row: Any) -> NotificationOut:
    return NotificationOut.model_validate(row._mapping)


async def _with_offers(
    session: AsyncSession, items: list[NotificationOut]
) -> list[NotificationOut]:
    """The notifications with their promo's offer (price, store, end) filled in."""
    ids = sorted({n.promo_id for n in items})
    if not ids:
        return items
    rows = await session.execute(_OFFERS, {"ids": ids})
    offers = {r.promo_id: {k: v for k, v in r._mapping.items() if k != "promo_id"} for r in rows}
    return [n.model_copy(update=offers.get(n.promo_id, {})) for n in items]


def _dead_letter(row: Any) -> DeadLetterOut:
    data = dict(row._mapping)
    try:
        data["promo_id"] = uuid.UUID(data["promo_id"]) if data["promo_id"] else None
    except ValueError:
        data["promo_id"] = None
    return DeadLetterOut.model_validate(data)


async def inbox(
    session: AsyncSession,
    user_id: uuid.UUID,
    limit: int,
    before: date | None = None,
    status: NotificationStatus | None = None,
) -> list[NotificationOut]:
    """The caller's notifications, newest day first, strictly before `before`."""
    rows = await session.execute(
        _INBOX,
        {
            "user_id": user_id,
            "before": before,
            "status": status.value if status else None,
            "limit": limit,
        },
    )
    return await _with_offers(session, [_notification(r) for r in rows])


async def mark_read(
    session: AsyncSession, user_id: uuid.UUID, notification_id: int
) -> NotificationOut:
    """Mark one of the caller's notifications read (again is harmless); others' are 404."""
    row = (await session.execute(_MARK_READ, {"id": notification_id, "user_id": user_id})).first()
    if row is None:
        raise NotFound(f"No notification {notification_id}.")
    [out] = await _with_offers(session, [_notification(row)])
    return out


async def since(
    session: AsyncSession, user_id: uuid.UUID, after: int, limit: int = 100
) -> list[NotificationOut]:
    """The caller's notifications with an id above `after`, oldest first (stream replay)."""
    rows = await session.execute(_SINCE, {"user_id": user_id, "after": after, "limit": limit})
    return await _with_offers(session, [_notification(r) for r in rows])


async def latest_id(session: AsyncSession, user_id: uuid.UUID) -> int:
    value = (await session.execute(_LATEST_ID, {"u": user_id})).scalar_one()
    return int(value)


async def dead_letters(
    session: AsyncSession, limit: int, after: int | None = None
) -> list[DeadLetterOut]:
    rows = await session.execute(
        text(
            f"SELECT {_DEAD_COLUMNS} FROM outbox WHERE status = 'dead' AND id > :after"
            " ORDER BY id LIMIT :limit"
        ),
        {"after": after or 0, "limit": limit},
    )
    return [_dead_letter(r) for r in rows]


async def retry_dead_letter(session: AsyncSession, job_id: int) -> DeadLetterOut:
    """Send a dead job back to the queue with fresh attempts; workers wake on commit."""
    row = (
        await session.execute(
            text(
                "UPDATE outbox o SET status = 'pending', attempts = 0, run_at = now(),"
                " locked_by = NULL, locked_at = NULL, updated_at = now()"
                " WHERE id = :id AND status = 'dead' AND NOT EXISTS (SELECT 1 FROM outbox d"
                " WHERE d.topic = o.topic AND d.key = o.key AND d.status = 'pending')"
                f" RETURNING {_DEAD_COLUMNS}"
            ),
            {"id": job_id},
        )
    ).first()
    if row is None:
        dead = await session.scalar(
            text("SELECT status = 'dead' FROM outbox WHERE id = :id"), {"id": job_id}
        )
        if dead:
            raise Conflict(f"Job {job_id} is already queued again under the same key.")
        raise NotFound(f"No dead letter {job_id}.")
    await session.execute(text("SELECT pg_notify('outbox', '')"))
    return _dead_letter(row)
