"""A reserve's plan outlives the table sizes it was made for. plpgsql caches a generic plan
of each statement in a function from its sixth call on a connection (asyncpg does the same
for a prepared statement) and keeps it until something invalidates it, such as an ANALYZE
of a table it reads. Made while `reservations` was near empty (a new database, its first
crowd), that plan read the whole table twice a reserve, in the caller's rows and in the
retirement of a taken-over hold, so every reserve got slower as holds piled up until
autovacuum next analyzed the table. The reserve's statements seek however small the tables
were when they were planned."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest

from app.core.migrations import upgrade_to_head
from app.core.plpgsql import uuid_array

CALLS = {
    "promo_reserve": "SELECT * FROM promo_reserve($1, $2, 60)",
    "promo_reserve_batch": "SELECT * FROM promo_reserve_batch($1, $2::text::uuid[], 60)",
}
CROWD = 5_000
# Sequential scans of reservations, and blocks read of it and its indexes, by this backend.
_READ = """
SELECT t.seq_scan,
       (SELECT sum(pg_stat_get_xact_blocks_fetched(r))
        FROM unnest(ARRAY(SELECT indexrelid FROM pg_index WHERE indrelid = t.relid) || t.relid)
            AS r) AS blocks
FROM pg_stat_xact_user_tables t WHERE t.relname = 'reservations'
"""


async def _people(conn: asyncpg.Connection, n: int) -> list[uuid.UUID]:
    rows = await conn.fetch(
        "INSERT INTO users (email, lat, lng) SELECT 'plan-' || gen_random_uuid() ||"
        " '@example.com', 40.4168, -3.7038 FROM generate_series(1, $1) RETURNING id",
        n,
    )
    return [r["id"] for r in rows]


async def _reserve(conn: asyncpg.Connection, name: str, promo: uuid.UUID, user: uuid.UUID) -> None:
    arg = uuid_array([user]) if name == "promo_reserve_batch" else user
    rows = await conn.fetch(CALLS[name], promo, arg)
    assert [r["hold_id"] is not None for r in rows] == [True], [dict(r) for r in rows]


@pytest.mark.parametrize("name", sorted(CALLS))
async def test_a_reserve_planned_while_the_tables_were_empty_still_seeks_once_holds_pile_up(
    blank_database: str, name: str
) -> None:
    await asyncio.to_thread(upgrade_to_head, blank_database)
    conn = await asyncpg.connect(blank_database)
    try:
        # No ANALYZE may refresh the plans behind the test's back.
        await conn.execute(
            "ALTER TABLE reservations SET (autovacuum_enabled = false);"
            " ALTER TABLE promo_units SET (autovacuum_enabled = false)"
        )
        product = await conn.fetchval(
            "WITH s AS (INSERT INTO stores (name, lat, lng) VALUES ('plan', 40.4168, -3.7038)"
            " RETURNING id) INSERT INTO products (store_id, name, price_cents)"
            " SELECT id, 'plan', 1000 FROM s RETURNING id"
        )
        promo, crowded = (
            r["id"]
            for r in await conn.fetch(
                "INSERT INTO promos (product_id, title, promo_price_cents, quantity, starts_at,"
                " ends_at) SELECT $1, 'plan', 500, $2, now() - interval '1 minute',"
                " now() + interval '1 day' FROM generate_series(1, 2) RETURNING id",
                product,
                CROWD,
            )
        )
        await conn.execute("ANALYZE")
        # Eight reserves on this connection with the tables near empty: from the sixth on,
        # the function runs cached generic plans made now.
        for user in await _people(conn, 8):
            await _reserve(conn, name, promo, user)

        # A crowd's holds on another promo, lapsed and live, as reserve leaves them; no
        # ANALYZE sees them.
        await conn.execute(
            """
            WITH people AS (
                INSERT INTO users (email)
                SELECT 'crowd-' || gen_random_uuid() || '@example.com'
                FROM generate_series(1, $2)
                RETURNING id
            ),
            pairs AS (
                SELECT u.id AS unit_id, p.id AS user_id, u.n
                FROM (SELECT id, row_number() OVER (ORDER BY seq) AS n FROM promo_units
                      WHERE promo_id = $1) u
                JOIN (SELECT id, row_number() OVER () AS n FROM people) p USING (n)
            ),
            holds AS (
                INSERT INTO reservations (promo_id, user_id, unit_id, expires_at)
                SELECT $1, user_id, unit_id,
                       now() + CASE WHEN n % 2 = 0 THEN 60 ELSE -60 END * interval '1 second'
                FROM pairs
                RETURNING id, unit_id
            )
            UPDATE promo_units u SET state = 'held', reservation_id = holds.id
            FROM holds WHERE u.id = holds.unit_id
            """,
            crowded,
            CROWD,
        )

        [user] = await _people(conn, 1)
        # The counters are the backend's own since it last reported them (it does not while a
        # transaction is open): the difference across the reserve is the reserve's.
        async with conn.transaction():
            before = await conn.fetchrow(_READ)
            await _reserve(conn, name, promo, user)
            after = await conn.fetchrow(_READ)
        read = {k: after[k] - before[k] for k in ("seq_scan", "blocks")}
        # Measured: 2 sequential scans, about 160 blocks with 5,000 holds before (the whole
        # table, twice; 1 scan and 90 blocks batched); none after, about 20 blocks.
        assert read["seq_scan"] == 0, read
        assert read["blocks"] < 60, read
    finally:
        await conn.close()
