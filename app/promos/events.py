"""What promos announce to the rest of the service, through the outbox.

`promo.started`: due at the promo's `starts_at` (at once if it is already running); key the
promo id, payload `{"promo_id": "<id>"}`. One pending job per promo, moved when the promo is
edited and cancelled when it is cancelled, deleted or no longer live; written in the promo's
own transaction, so it exists exactly when the change commits. Whoever runs it (the
notifications fan-out) checks the promo's state again when it runs.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from app.core import outbox

PROMO_STARTED = "promo.started"
# A fan-out resumes where it stopped, so its attempts are spent on outages, not on work done.
STARTED_MAX_ATTEMPTS = 10


async def schedule_started(
    session: AsyncSession, promo_id: uuid.UUID, run_at: datetime | None
) -> int:
    """Schedule (or move) the promo's `promo.started` job to `run_at` (None = now)."""
    return await outbox.schedule(
        session,
        PROMO_STARTED,
        str(promo_id),
        payload={"promo_id": str(promo_id)},
        run_at=run_at,
        max_attempts=STARTED_MAX_ATTEMPTS,
    )


async def cancel_started(session: AsyncSession, promo_id: uuid.UUID) -> int:
    """Cancel the promo's pending `promo.started` job; a running fan-out stops at its next
    batch when it sees the promo cancelled. Returns the number of jobs cancelled."""
    return await outbox.cancel(session, PROMO_STARTED, str(promo_id))
