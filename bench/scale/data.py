"""The data set of the scale benchmark, built in SQL with generate_series (no round trip per
row), at any size. Every row is one the service could have written: codes with the history
that explains them, sold units with their one purchase and their sales slot, so
`python -m app check` holds on it.

Ids are derived from numbers (`md5('u' || n)::uuid` is user n), so statements can name
their probes without looking anything up. User 1 is the "heavy" caller whose own rows
(codes, history, notifications, reservations) grow with the size.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg

from app.books import rules as books_rules


@dataclass(frozen=True)
class Scale:
    label: str
    users: int
    book_codes: int  # the big book; 99 % of its codes held
    history: int  # redemption_history rows in all
    heavy_codes: int  # codes of the big book held by user 1
    heavy_notifications: int
    heavy_reservations: int
    stores: int  # one product each
    live_promos: int
    sold_out_promos: int  # sold out, not yet ended, ending before the live ones
    ended_promos: int  # where most reservations are
    reservations: int
    notifications: int
    idempotency_keys: int  # spread over 30 days: most are past the 24 h TTL
    finished_jobs: int  # outbox jobs done over the last 10 days
    audience_rows: int  # notification_audience of fan-outs finished 10 days ago
    live_locks: int = 50  # checkouts in flight: as many at any size
    rollbacks: int = 3  # rolled-back redemptions, all a year old
    side_book_codes: int = 1_000  # the small book whose stats the big one is compared with


# Big enough that every page statement fills its page (51 rows).
SMALL = Scale(
    "small",
    users=1_000,
    book_codes=1_000,
    history=2_500,
    heavy_codes=120,
    heavy_notifications=120,
    heavy_reservations=120,
    stores=600,
    live_promos=60,
    sold_out_promos=5,
    ended_promos=2,
    reservations=1_000,
    notifications=5_000,
    idempotency_keys=1_000,
    finished_jobs=100,
    audience_rows=1_000,
    rollbacks=60,
)

# The data set: a 2M-code book 99 % assigned, 5M history rows, 1,000 live promos over
# 10k stores, 1M reservations, 5M inbox rows, 1M idempotency keys.
LARGE = Scale(
    "large",
    users=200_000,
    book_codes=2_000_000,
    history=5_000_000,
    heavy_codes=1_000,
    heavy_notifications=365,
    heavy_reservations=500,
    stores=10_000,
    live_promos=1_000,
    sold_out_promos=500,
    ended_promos=100,
    reservations=1_000_000,
    notifications=5_000_000,
    idempotency_keys=1_000_000,
    finished_jobs=100_000,
    audience_rows=1_000_000,
    rollbacks=100,
)

# What `make test` builds: large enough that a scan shows, small enough to load in seconds.
MODERATE = Scale(
    "moderate",
    users=10_000,
    book_codes=100_000,
    history=250_000,
    heavy_codes=300,
    heavy_notifications=120,
    heavy_reservations=120,
    stores=1_000,
    live_promos=100,
    sold_out_promos=100,
    ended_promos=5,
    reservations=50_000,
    notifications=100_000,
    idempotency_keys=50_000,
    finished_jobs=5_000,
    audience_rows=20_000,
    rollbacks=60,
)


def user_id(n: int) -> uuid.UUID:
    """User n of the data set (as `md5('u' || n)::uuid` in SQL)."""
    import hashlib

    return uuid.UUID(hashlib.md5(f"u{n}".encode()).hexdigest())


BIG_BOOK = uuid.UUID("00000000-0000-4000-8000-00000000b001")
SIDE_BOOK = uuid.UUID("00000000-0000-4000-8000-00000000b002")
HEAVY = user_id(1)
SEGMENT = uuid.UUID("00000000-0000-4000-8000-000000005e91")
# Stores and users share a square around Madrid, 40 km wide for 10,000 stores (as in
# bench/promos.py) and as much narrower for fewer: stores are as dense at every size, so
# what grows is the tables, not the stores within a caller's reach.
LAT0, LNG0, SPAN_LAT, SPAN_LNG = 40.24, -3.94, 0.36, 0.47


def _square(s: Scale) -> tuple[float, float, float, float]:
    side = (s.stores / 10_000) ** 0.5
    return LAT0, SPAN_LAT * side, LNG0, SPAN_LNG * side


_USER = "md5('u' || ({n}))::uuid"
# Where the big book's codes go, by their number g (1..N): one in a hundred free, a quarter
# redeemed, `live_locks` locked now, one in a hundred locked long ago (a lapsed lock still
# reads `locked` in its row), the rest assigned. User 1 holds one in every N/heavy_codes.
_CODE_STATUS = """CASE WHEN g % 100 = 0 THEN 'unassigned'
     WHEN g % 4 = 1 THEN 'redeemed'
     WHEN g % 4 = 2 AND g <= 4 * $5 THEN 'locked'
     WHEN g % 100 = 50 THEN 'locked'
     ELSE 'assigned' END"""
_CODE_USER = f"""CASE WHEN g % 100 = 0 THEN NULL
     WHEN g % $4 = 7 THEN {_USER.format(n="1")}
     ELSE {_USER.format(n="2 + (g::bigint * 7919) % ($3 - 1)")} END"""


async def _big_book(conn: asyncpg.Connection, s: Scale) -> None:
    await conn.execute(
        "INSERT INTO books (id, name, max_codes_per_user, lock_ttl_seconds)"
        " VALUES ($1, 'big book', NULL, 86400), ($2, 'side book', NULL, 86400)",
        BIG_BOOK,
        SIDE_BOOK,
    )
    await conn.execute(
        f"""
        INSERT INTO codes (book_id, code, status, user_id, assigned_at, locked_until, lock_id,
                           redemptions)
        SELECT $1, 'SB' || g, st, u,
               CASE WHEN u IS NOT NULL THEN now() - interval '300 days' END,
               CASE WHEN st = 'locked' THEN
                   CASE WHEN g <= 4 * $5 THEN now() + interval '1 day'
                        ELSE now() - interval '1 day' END END,
               CASE WHEN st = 'locked' THEN md5('l' || g)::uuid END,
               CASE WHEN st = 'redeemed' THEN 1 ELSE 0 END
        FROM generate_series(1, $2) AS g,
             LATERAL (SELECT {_CODE_STATUS} AS st, {_CODE_USER} AS u) AS x
        ORDER BY g
        """,
        BIG_BOOK,
        s.book_codes,
        s.users,
        max(s.book_codes // s.heavy_codes, 8),
        s.live_locks,
    )
    # Half of the side book assigned, each with its history row.
    await conn.execute(
        f"""
        WITH c AS (
            INSERT INTO codes (book_id, code, status, user_id, assigned_at)
            SELECT $1, 'SS' || g, CASE WHEN g % 2 = 0 THEN 'assigned' ELSE 'unassigned' END,
                   CASE WHEN g % 2 = 0 THEN {_USER.format(n="2 + g % ($3 - 1)")} END,
                   CASE WHEN g % 2 = 0 THEN now() - interval '200 days' END
            FROM generate_series(1, $2) AS g ORDER BY g
            RETURNING id, book_id, user_id
        )
        INSERT INTO redemption_history (code_id, book_id, user_id, action, actor_id, at)
        SELECT id, book_id, user_id, 'assigned', user_id, now() - interval '200 days'
        FROM c WHERE user_id IS NOT NULL
        """,
        SIDE_BOOK,
        s.side_book_codes,
        s.users,
    )


async def _history(conn: asyncpg.Connection, s: Scale) -> None:
    """The big book's history, in time order (ids follow time, as they do in service).
    Rolled-back redemptions come first: a year old, they are what `?action=rolled_back`
    has to find at the far end of the table."""
    first, last = await conn.fetchval(
        "SELECT array[min(id), max(id)] FROM codes WHERE book_id = $1", BIG_BOOK
    )
    n = s.book_codes
    assert last - first + 1 == n, "the big book's ids are not consecutive"
    assigned = n - n // 100
    redeemed = (n + 3) // 4
    locked = await conn.fetchval(
        "SELECT count(*) FROM codes WHERE book_id = $1 AND status = 'locked'", BIG_BOOK
    )
    side = s.side_book_codes // 2
    pairs = max((s.history - assigned - redeemed - locked - 2 * s.rollbacks - side) // 2, 0)
    per_mille = min(1000, pairs * 1000 // max(assigned - redeemed, 1) + 1)
    # Codes g % 4 = 3 with g <= 4 * rollbacks: redeemed then rolled back, long ago.
    at = "now() - interval '365 days' * (1 - t)"
    await conn.execute(
        f"""
        INSERT INTO redemption_history (code_id, book_id, user_id, action, actor_id, at, details)
        SELECT $1 + g - 1, $2, c.user_id, a.action, c.user_id, {at.replace("t)", "a.t)")}, '{{}}'
        FROM generate_series(3, 4 * $3, 4) AS g
        JOIN codes c ON c.book_id = $2 AND c.id = $1 + g - 1
        CROSS JOIN LATERAL (VALUES ('assigned', g * 1e-7), ('redeemed', g * 1e-7 + 1e-9))
            AS a(action, t)
        ORDER BY a.t
        """,
        first,
        BIG_BOOK,
        s.rollbacks,
    )
    await conn.execute(
        """
        INSERT INTO redemption_history
            (code_id, book_id, user_id, action, actor_id, at, reverses_id, details)
        SELECT h.code_id, h.book_id, h.user_id, 'rolled_back', h.user_id,
               h.at + interval '1 hour', h.id, jsonb_build_object('redemption_id', h.id)
        FROM redemption_history h
        WHERE h.book_id = $1 AND h.action = 'redeemed' AND h.code_id < $2 + 4 * $3
        ORDER BY h.id
        """,
        BIG_BOOK,
        first,
        s.rollbacks,
    )
    # Everything else: assignments over the first half of the year, lock/unlock pairs and
    # the locks still in place over the next 0.4, redemptions in the last 0.1.
    await conn.execute(
        f"""
        INSERT INTO redemption_history (code_id, book_id, user_id, action, actor_id, at)
        SELECT $1 + e.g - 1, $2, e.u, e.action, e.u, {at.replace("t)", "e.t)")}
        FROM (
            SELECT c.g, c.u, a.action, a.t
            FROM (SELECT g, {_CODE_STATUS} AS st, {_CODE_USER} AS u
                  FROM generate_series(1, $6) AS g) AS c
            CROSS JOIN LATERAL (
                SELECT 'assigned' AS action, 0.5 * c.g / $6 AS t
                WHERE c.st <> 'unassigned' AND NOT (c.g % 4 = 3 AND c.g <= 4 * $7)
                UNION ALL
                SELECT x.action, 0.5 + 0.4 * c.g / $6 + x.dt
                FROM (VALUES ('locked', 0.0), ('unlocked', 1e-9)) AS x(action, dt)
                WHERE c.st IN ('assigned', 'locked') AND (c.g * 2654435761) % 1000 < $8
                UNION ALL
                SELECT 'locked', CASE WHEN c.g <= 4 * $5 THEN 0.9999 + 1e-10 * c.g
                                      ELSE 0.5 + 0.4 * c.g / $6 + 2e-9 END
                WHERE c.st = 'locked'
                UNION ALL
                SELECT 'redeemed', 0.9 + 0.0999 * c.g / $6 WHERE c.st = 'redeemed'
            ) AS a
        ) AS e
        ORDER BY e.t
        """,
        first,
        BIG_BOOK,
        s.users,
        max(n // s.heavy_codes, 8),
        s.live_locks,
        n,
        s.rollbacks,
        per_mille,
    )


async def _places(conn: asyncpg.Connection, s: Scale) -> None:
    """Users, stores with a product each, promos (their units come from the promo trigger)."""
    await conn.execute(
        """
        INSERT INTO users (id, email, lat, lng, location_updated_at, tags)
        SELECT md5('u' || g)::uuid, 'scale-' || g || '@example.com',
               $1::float8 + $2::float8 * ((g::bigint * 7907) % 10007) / 10007.0,
               $3::float8 + $4::float8 * ((g::bigint * 6113) % 10009) / 10009.0,
               now(), CASE WHEN g % 2 = 0 THEN ARRAY['vegan'] ELSE '{}'::text[] END
        FROM generate_series(1, $5) AS g
        """,
        *_square(s),
        s.users,
    )
    await conn.execute(
        "INSERT INTO segments (id, name, kind, rules)"
        " VALUES ($1, 'vegans', 'rule', '{\"tags_any\": [\"vegan\"]}')",
        SEGMENT,
    )
    await conn.execute(
        """
        WITH st AS (
            INSERT INTO stores (id, name, lat, lng)
            SELECT md5('s' || g)::uuid, 'Store ' || g,
                   $1::float8 + $2::float8 * ((g * 4391) % 9973) / 9973.0,
                   $3::float8 + $4::float8 * ((g * 3571) % 9967) / 9967.0
            FROM generate_series(1, $5) AS g
            RETURNING id
        )
        INSERT INTO products (id, store_id, name, price_cents)
        SELECT md5('p' || st.id::text)::uuid, st.id, 'Croissant', 250 FROM st
        """,
        *_square(s),
        s.stores,
    )
    # Promo g: live for g <= live, then sold out (ending first), then ended long ago.
    live, sold_out, ended = s.live_promos, s.sold_out_promos, s.ended_promos
    per_ended = max((s.reservations - 2 * sold_out) // max(ended, 1) // 10, 1)
    await conn.execute(
        """
        INSERT INTO promos (id, product_id, title, promo_price_cents, quantity, starts_at,
                            ends_at, radius_m)
        SELECT md5('promo' || g)::uuid,
               md5('p' || md5('s' || (1 + (g * 7) % $4))::uuid::text)::uuid, 'Deal ' || g, 100,
               CASE WHEN g <= $1 THEN 10 WHEN g <= $1 + $2 THEN 2 ELSE $5 END,
               CASE WHEN g <= $1 + $2 THEN now() - interval '1 hour'
                    ELSE now() - interval '30 days' END,
               CASE WHEN g <= $1 THEN now() + interval '2 hours' + g * interval '1 minute'
                    WHEN g <= $1 + $2 THEN now() + interval '1 hour' + g * interval '1 second'
                    ELSE now() - interval '29 days' END,
               2000
        FROM generate_series(1, $1::int + $2::int + $3::int) AS g
        """,
        live,
        sold_out,
        ended,
        s.stores,
        per_ended,
    )
    await conn.execute(
        "INSERT INTO promo_segments (promo_id, segment_id)"
        " SELECT md5('promo' || g)::uuid, $2 FROM generate_series(5, $1, 5) AS g",
        live,
        SEGMENT,
    )


async def _sales(conn: asyncpg.Connection, s: Scale) -> None:
    # Reservations: every unit of the sold-out promos and one in ten of the ended ones
    # purchased; the rest of the ended promos' reservations lapsed (`expired`). User 1
    # has `heavy_reservations` of them.
    await conn.execute(
        f"""
        CREATE TEMP TABLE scale_sales ON COMMIT DROP AS
        SELECT u.id AS unit_id, u.promo_id, u.seq,
               md5('r' || u.id)::uuid AS reservation_id,
               {_USER.format(n="2 + (u.id * 7919) % ($3 - 1)")} AS user_id
        FROM promo_units u JOIN promos p ON p.id = u.promo_id
        WHERE p.ends_at < now() + interval '90 minutes' AND p.starts_at > now() - interval '2 hours'
           OR (p.ends_at < now() AND u.seq % 10 = 0)
        """.replace("$3", str(s.users)),
    )
    await conn.execute(
        """
        INSERT INTO reservations (id, promo_id, user_id, unit_id, status, expires_at,
                                  created_at, updated_at)
        SELECT reservation_id, promo_id, user_id, unit_id, 'purchased',
               now() - interval '50 minutes', now() - interval '51 minutes',
               now() - interval '50 minutes'
        FROM scale_sales
        """
    )
    await conn.execute(
        """
        INSERT INTO purchase_log
            (reservation_id, promo_id, unit_id, user_id, price_cents, currency, at)
        SELECT s.reservation_id, s.promo_id, s.unit_id, s.user_id, p.promo_price_cents,
               pr.currency, now() - interval '50 minutes'
        FROM scale_sales s JOIN promos p ON p.id = s.promo_id
        JOIN products pr ON pr.id = p.product_id
        ORDER BY s.unit_id
        """
    )
    await conn.execute(
        "UPDATE promo_units u SET state = 'sold', reservation_id = s.reservation_id"
        " FROM scale_sales s WHERE u.id = s.unit_id"
    )
    await conn.execute(
        "INSERT INTO promo_sales (promo_id, slot, sold, last_sold_at)"
        " SELECT promo_id, seq % 16, count(*), now() - interval '50 minutes'"
        " FROM scale_sales GROUP BY 1, 2"
    )
    await conn.execute(
        f"""
        INSERT INTO reservations (promo_id, user_id, unit_id, status, expires_at, created_at,
                                  updated_at)
        SELECT u.promo_id,
               CASE WHEN k <= $2 THEN {_USER.format(n="1")}
                    ELSE {_USER.format(n="2 + (k * 7919) % ($3 - 1)")} END,
               u.id, 'expired', p.starts_at + k * interval '1 second',
               p.starts_at + k * interval '1 second' - interval '60 seconds',
               p.starts_at + k * interval '1 second'
        FROM (SELECT row_number() OVER () AS k, x.* FROM (
                SELECT u.id, u.promo_id FROM promo_units u JOIN promos p ON p.id = u.promo_id
                WHERE p.ends_at < now() ORDER BY u.id) AS x
              CROSS JOIN generate_series(1, 10)
              LIMIT greatest($1 - (SELECT count(*) FROM reservations), 0)) AS u
        JOIN promos p ON p.id = u.promo_id
        """,
        s.reservations,
        s.heavy_reservations,
        s.users,
    )


async def _inbox(conn: asyncpg.Connection, s: Scale) -> None:
    """One notification per user per day: user 1 has `heavy_notifications` days, the others
    share the rest. Plus the audience staging of fan-outs that finished long ago."""
    others = s.notifications - s.heavy_notifications
    days = -(-others // (s.users - 1))
    promo = "md5('promo' || ($4 + 1 + (u + d) % greatest($5, 1)))::uuid"
    await conn.execute(
        f"""
        INSERT INTO notifications (user_id, promo_id, day, status, created_at)
        SELECT md5('u' || u)::uuid, {promo}, current_date - d,
               CASE WHEN d > 2 THEN 'read' ELSE 'unread' END, now() - d * interval '1 day'
        FROM (SELECT 1 AS u, d FROM generate_series(0, $1 - 1) AS d
              UNION ALL
              (SELECT u, d FROM generate_series(0, $2 - 1) AS d,
                                generate_series(2, $6) AS u
               LIMIT $3)) AS x
        ORDER BY d DESC, u
        """,
        s.heavy_notifications,
        days,
        others,
        s.live_promos + s.sold_out_promos,
        s.ended_promos,
        s.users,
    )
    fanouts = max(min(s.ended_promos, 10), 1)
    await conn.execute(
        """
        INSERT INTO notification_fanouts (promo_id, status, audience, notified, batches,
                                          started_at, updated_at, finished_at)
        SELECT md5('promo' || ($1 + g))::uuid, 'done', $3 / $2, $3 / $2, 1,
               now() - interval '10 days', now() - interval '10 days', now() - interval '10 days'
        FROM generate_series(1, $2) AS g
        """,
        s.live_promos + s.sold_out_promos,
        fanouts,
        s.audience_rows,
    )
    await conn.execute(
        """
        INSERT INTO notification_audience (promo_id, user_id, day)
        SELECT md5('promo' || ($1 + g))::uuid, md5('u' || u)::uuid, current_date - 10
        FROM generate_series(1, $2) AS g, generate_series(1, least($3 / $2, $4)) AS u
        """,
        s.live_promos + s.sold_out_promos,
        fanouts,
        s.audience_rows,
        s.users,
    )


async def _housekeeping(conn: asyncpg.Connection, s: Scale) -> None:
    """Idempotency keys over the last 30 days and outbox jobs finished over the last 10."""
    await conn.execute(
        """
        INSERT INTO idempotency_keys (user_id, route, key, request_hash, status_code, body,
                                      created_at)
        SELECT md5('u' || (1 + g % $2))::uuid, 'POST /api/v1/books/{book_id}/assign',
               'key-' || g, 'hash', 201, '{}'::jsonb,
               now() - interval '30 days' * (1 - g::float8 / $1)
        FROM generate_series(1, $1) AS g
        """,
        s.idempotency_keys,
        s.users,
    )
    await conn.execute(
        """
        INSERT INTO outbox (topic, payload, status, attempts, created_at, updated_at, run_at)
        SELECT 'webhook.deliver', '{}'::jsonb, CASE WHEN g % 1000 = 0 THEN 'dead' ELSE 'done' END,
               1, t, t, t
        FROM generate_series(1, $1) AS g,
             LATERAL (SELECT now() - interval '10 days' * (1 - g::float8 / $1) AS t) AS x
        """,
        s.finished_jobs,
    )


# The triggers that keep `book_code_counts` did not fire under the replica role: count once,
# into slot 0 of each book's 16, as the migration that created them did.
_RECOUNT = f"""
WITH counted AS ({books_rules.CODES_BY_STORED_STATE})
INSERT INTO book_code_counts (book_id, slot, unassigned, held, redeemed)
SELECT b.id, s.slot, CASE WHEN s.slot = 0 THEN coalesce(c.unassigned, 0) ELSE 0 END,
       CASE WHEN s.slot = 0 THEN coalesce(c.held, 0) ELSE 0 END,
       CASE WHEN s.slot = 0 THEN coalesce(c.redeemed, 0) ELSE 0 END
FROM books b CROSS JOIN generate_series(0, 15) AS s(slot)
LEFT JOIN counted c ON c.book_id = b.id
"""


# Secondary indexes of the big tables are built once after the rows are in (a sorted build),
# not row by row: the same definitions, read from the catalog, minutes faster.
_BULK_TABLES = ("codes", "redemption_history", "notifications", "reservations", "idempotency_keys")


@contextlib.asynccontextmanager
async def _indexes_dropped(
    conn: asyncpg.Connection, tables: tuple[str, ...]
) -> AsyncIterator[None]:
    rows = await conn.fetch(
        """
        SELECT i.indexrelid::regclass::text AS name, pg_get_indexdef(i.indexrelid) AS ddl
        FROM pg_index i
        WHERE i.indrelid = ANY(SELECT to_regclass(t) FROM unnest($1::text[]) AS t)
          AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid)
        """,
        list(tables),
    )
    for row in rows:
        await conn.execute(f"DROP INDEX {row['name']}")
    try:
        yield
    finally:
        for row in rows:
            await conn.execute(row["ddl"])


async def load(url: str, scale: Scale, *, log: bool = True) -> float:
    """Fill a freshly migrated, empty database; returns the seconds it took.

    After the promos (whose units a trigger creates), rows go in with
    `session_replication_role = replica`: foreign-key checks row by row would take most of
    the time, and every reference here is made consistent by construction. Counters that
    triggers keep are then counted once from the rows."""
    started = time.monotonic()
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("SET work_mem = '256MB'; SET maintenance_work_mem = '512MB'")
        steps = [
            ("users, stores, promos", _places, False),
            ("reservations and sales", _sales, True),
            ("books and codes", _big_book, True),
            ("history", _history, True),
            ("inbox", _inbox, True),
            ("idempotency keys and outbox", _housekeeping, True),
        ]
        async with _indexes_dropped(conn, _BULK_TABLES):
            for name, step, bulk in steps:
                t = time.monotonic()
                async with conn.transaction():
                    if bulk:
                        await conn.execute("SET LOCAL session_replication_role = replica")
                    await step(conn, scale)
                if log:
                    print(f"  {scale.label}: {name} in {time.monotonic() - t:.1f} s", flush=True)
            t = time.monotonic()
        if log:
            print(f"  {scale.label}: indexes rebuilt in {time.monotonic() - t:.1f} s", flush=True)
        if await conn.fetchval("SELECT to_regclass('book_code_counts') IS NOT NULL"):
            async with conn.transaction():
                await conn.execute("DELETE FROM book_code_counts")
                await conn.execute(_RECOUNT)
        if await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'promos'::regclass"
            " AND attname = 'sold_out' AND NOT attisdropped)"
        ):
            from app.promos import soldout

            while await soldout.mark_sold_out(conn, 5000):  # what the worker does in seconds
                pass
        t = time.monotonic()
        await conn.execute("VACUUM (ANALYZE)")
        if log:
            print(f"  {scale.label}: VACUUM ANALYZE in {time.monotonic() - t:.1f} s", flush=True)
    finally:
        await conn.close()
    return time.monotonic() - started
