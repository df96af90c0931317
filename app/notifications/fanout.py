"""Fan-out of a started promo: audience once, then inbox rows in resumable keyset batches.

1. One set-based statement selects the audience (segment ∧ within the radius of the store,
   by last known location, through the GiST index on users) into `notification_audience`,
   and creates the progress row, in one transaction: it happens once per promo.
2. Each batch is its own transaction: lock the progress row, take the next `batch_size`
   audience users after the cursor, insert their notifications with
   `ON CONFLICT (user_id, day) DO NOTHING`, enqueue one webhook job naming the new ids,
   NOTIFY each user's channel, and advance the cursor. A worker killed anywhere either
   committed the batch with its cursor or neither, so a restart resumes with no gap and
   no duplicate; the unique (user, day) key makes even a replayed batch harmless.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import asyncpg
import orjson
import structlog

from app.core import tracing
from app.core.outbox import Conn, Job, key_lock_sql
from app.notifications.metrics import CREATED
from app.notifications.webhook import WEBHOOK_DELIVER
from app.promos import rules
from app.promos.events import PROMO_STARTED

log = structlog.get_logger(__name__)

_ZERO_UUID = uuid.UUID(int=0)


class Released(Exception):
    """The worker is stopping: hand the job back unfinished."""


class LostLease(Exception):
    """Another worker took the job over; stop without touching it."""


class NotYet(Exception):
    """The promo starts later than the job ran (it was moved): run again at `at`."""

    def __init__(self, at: datetime) -> None:
        super().__init__(f"promo starts at {at.isoformat()}")
        self.at = at


@dataclass(frozen=True)
class FanoutResult:
    promo_id: uuid.UUID
    status: str
    notified: int
    batches: int


# Distance: the same test as `earth_distance(store, user) <= radius_m` (earthdistance's
# great circle is a monotonic function of the chord), computed on unit-sphere coordinates
# in plain floats: ll_to_earth() per user row costs a domain check each and made this query
# 5x slower at a million users. The GiST index on ll_to_earth(lat, lng) still picks the
# candidates (earth_box). A time zone the server does not know counts as UTC.
_SELECT_AUDIENCE = """
WITH tz AS MATERIALIZED (SELECT name FROM pg_timezone_names),
store AS MATERIALIZED (
    SELECT p.id AS promo_id, p.radius_m, ll_to_earth(s.lat, s.lng) AS point,
           cos(radians(s.lat)) * cos(radians(s.lng)) AS x,
           cos(radians(s.lat)) * sin(radians(s.lng)) AS y,
           sin(radians(s.lat)) AS z,
           (gc_to_sec(p.radius_m) / earth()) ^ 2 AS chord2,
           EXISTS (SELECT 1 FROM promo_segments ps WHERE ps.promo_id = p.id) AS segmented
    FROM promos p
    JOIN products pr ON pr.id = p.product_id
    JOIN stores s ON s.id = pr.store_id
    WHERE p.id = $1
)
INSERT INTO notification_audience (promo_id, user_id, day)
SELECT st.promo_id, u.id, (now() AT TIME ZONE coalesce(tz.name, 'UTC'))::date
FROM store st
JOIN users u ON earth_box(st.point, st.radius_m) @> ll_to_earth(u.lat, u.lng)
LEFT JOIN tz ON tz.name = u.timezone
WHERE u.lat IS NOT NULL AND u.lng IS NOT NULL
  AND (cos(radians(u.lat)) * cos(radians(u.lng)) - st.x) ^ 2
      + (cos(radians(u.lat)) * sin(radians(u.lng)) - st.y) ^ 2
      + (sin(radians(u.lat)) - st.z) ^ 2 <= st.chord2
  AND (NOT st.segmented
       OR EXISTS (SELECT 1 FROM promo_segments ps JOIN segments g ON g.id = ps.segment_id
                  WHERE ps.promo_id = st.promo_id
                    AND segment_contains(g.kind, g.rules, g.id, u.id, u.tags, u.birth_date)))
ORDER BY u.id
"""

_PROMO_STATE = f"""
SELECT p.starts_at, p.starts_at > now() AS future,
       (p.active AND p.cancelled_at IS NULL AND p.ends_at > now() AND NOT {rules.SOLD_OUT})
           AS live
FROM promos p WHERE p.id = $1
"""

# Locks the progress row (batches of one promo run one at a time, whoever runs them) and
# checks that this worker still holds the job and that the promo was not cancelled meanwhile.
_BATCH_GUARD = """
SELECT f.cursor, f.status,
       coalesce(p.active AND p.cancelled_at IS NULL, false) AS live,
       EXISTS (SELECT 1 FROM outbox o
               WHERE o.id = $2 AND o.status = 'running' AND o.locked_by = $3) AS mine
FROM notification_fanouts f
LEFT JOIN promos p ON p.id = f.promo_id
WHERE f.promo_id = $1
FOR UPDATE OF f
"""

_BATCH = """
WITH batch AS MATERIALIZED (
    SELECT user_id, day FROM notification_audience
    WHERE promo_id = $1 AND user_id > $2
    ORDER BY user_id
    LIMIT $3
), ins AS (
    INSERT INTO notifications (user_id, promo_id, day)
    SELECT user_id, $1, day FROM batch ORDER BY user_id
    ON CONFLICT (user_id, day) DO NOTHING
    RETURNING id, user_id
), job AS (
    INSERT INTO outbox (topic, payload, max_attempts)
    SELECT $6,
           jsonb_build_object('promo_id', $1::text, 'ids', jsonb_agg(id ORDER BY id))
             || $8::jsonb,
           $7
    FROM ins
    WHERE $5
    HAVING count(*) > 0
    RETURNING id
), progress AS (
    UPDATE notification_fanouts
    SET cursor = coalesce((SELECT user_id FROM batch ORDER BY user_id DESC LIMIT 1), cursor),
        notified = notified + (SELECT count(*) FROM ins),
        batches = batches + 1,
        status = CASE WHEN (SELECT count(*) FROM batch) < $3 THEN 'done' ELSE status END,
        finished_at = CASE WHEN (SELECT count(*) FROM batch) < $3 THEN now() END,
        updated_at = now()
    WHERE promo_id = $1
), lease AS (
    UPDATE outbox SET locked_at = now() WHERE id = $4
), signal AS (
    SELECT count(pg_notify('user_' || replace(user_id::text, '-', ''), id::text)) AS n
    FROM ins
)
SELECT (SELECT count(*) FROM batch) AS taken,
       (SELECT count(*) FROM ins) AS inserted,
       (SELECT n FROM signal) AS signalled
"""


# A fan-out reads its audience only while `sending`: once it is done or cancelled, the rows
# are staging kept a while for inspection, then deleted by the worker: a primary-key seek
# per finished fan-out (in key order: a scan of the table would not stop for a fan-out
# already emptied), each row deleted where it lies (audience rows never change);
# `notification_fanouts` keeps the audience's size.
_PURGE_AUDIENCE = """
WITH doomed AS MATERIALIZED (
    SELECT a.ctid
    FROM notification_fanouts f
    CROSS JOIN LATERAL (
        SELECT x.ctid FROM notification_audience x WHERE x.promo_id = f.promo_id
        ORDER BY x.user_id LIMIT $2
    ) AS a
    WHERE f.status IN ('done', 'cancelled')
      AND f.finished_at < now() - make_interval(secs => $1)
    LIMIT $2
)
DELETE FROM notification_audience x USING doomed d WHERE x.ctid = d.ctid
"""


async def purge_audience(conn: Conn, older_than_s: float, limit: int) -> int:
    """Delete up to `limit` audience rows of fan-outs finished more than `older_than_s`
    ago; returns how many went."""
    status = await conn.execute(_PURGE_AUDIENCE, older_than_s, limit)
    return int(status.rsplit(" ", 1)[-1])


async def _begin(conn: Conn, promo_id: uuid.UUID) -> str | None:
    """Select the audience once (the advisory lock and the progress row make it once: a
    crashed attempt rolled back everything); returns the progress status, or None when the
    promo is not (or no longer) one to announce."""
    async with conn.transaction():
        # A bitmap scan reads the users' heap in physical order; the row estimate of the GiST
        # box is too low for the planner to choose it for large audiences. The sort feeds
        # the audience's primary key in order.
        await conn.execute(
            "SET LOCAL statement_timeout = '10min'; SET LOCAL enable_indexscan = off;"
            " SET LOCAL work_mem = '128MB'"
        )
        # The promo's job lock: one fan-out begins at a time, and not beside a reschedule.
        await conn.execute(
            f"SELECT {key_lock_sql('$1::text', '$2::text')}", PROMO_STARTED, str(promo_id)
        )
        status: str | None = await conn.fetchval(
            "SELECT status FROM notification_fanouts WHERE promo_id = $1", promo_id
        )
        if status is not None:
            return status
        state = await conn.fetchrow(_PROMO_STATE, promo_id)
        if state is None:
            return None
        if state["future"]:
            raise NotYet(state["starts_at"])
        if not state["live"]:
            return None
        result = await conn.execute(_SELECT_AUDIENCE, promo_id)
        audience = int(result.rsplit(" ", 1)[-1])
        await conn.execute(
            "INSERT INTO notification_fanouts (promo_id, audience) VALUES ($1, $2)",
            promo_id,
            audience,
        )
        log.info("fanout_audience", promo_id=str(promo_id), audience=audience)
        return "sending"


async def run_fanout(
    pool: asyncpg.Pool,
    job: Job,
    worker_id: str,
    *,
    batch_size: int,
    webhook: bool,
    webhook_max_attempts: int,
    stopping: Callable[[], bool],
) -> FanoutResult:
    """Announce a started promo to its audience; safe to run again after any crash."""
    promo_id = uuid.UUID(str(job.payload["promo_id"]))
    # The webhook jobs join this job's trace (an empty object when tracing is off).
    trace = orjson.dumps(tracing.with_trace({})).decode()
    async with pool.acquire() as conn:
        status = await _begin(conn, promo_id)
        if status is None:
            return FanoutResult(promo_id, "skipped", 0, 0)
        notified = batches = 0
        while status == "sending":
            if stopping():
                raise Released()
            async with conn.transaction():
                guard = await conn.fetchrow(_BATCH_GUARD, promo_id, job.id, worker_id)
                if guard is None or not guard["mine"]:
                    raise LostLease()
                status = guard["status"]
                if status != "sending":
                    break
                if not guard["live"]:
                    await conn.execute(
                        "UPDATE notification_fanouts SET status = 'cancelled',"
                        " finished_at = now(), updated_at = now() WHERE promo_id = $1",
                        promo_id,
                    )
                    status = "cancelled"
                    break
                row = await conn.fetchrow(
                    _BATCH,
                    promo_id,
                    guard["cursor"] or _ZERO_UUID,
                    batch_size,
                    job.id,
                    webhook,
                    WEBHOOK_DELIVER,
                    webhook_max_attempts,
                    trace,
                )
                assert row is not None
                if row["taken"] < batch_size:
                    status = "done"
                    await conn.execute(
                        "UPDATE promos SET notified_at = coalesce(notified_at, now())"
                        " WHERE id = $1",
                        promo_id,
                    )
            inserted = int(row["inserted"])
            notified += inserted
            batches += 1
            CREATED.inc(inserted)
        log.info("fanout_finished", promo_id=str(promo_id), status=status, notified=notified)
        return FanoutResult(promo_id, status, notified, batches)
