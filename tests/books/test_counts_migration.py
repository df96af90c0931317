"""Revision 0009 counts the codes already there into `book_code_counts` (and marks promos
already sold out); from then on the triggers keep the counts; downgrading removes it all."""

from __future__ import annotations

import asyncio

import asyncpg
from alembic import command

from app.check import CHECKS, run_checks, violations
from app.core.migrations import alembic_config
from tests.helpers import run_sql

_SEED = """
WITH u AS (INSERT INTO users (email) VALUES ('mig@example.com') RETURNING id),
b AS (INSERT INTO books (name, max_codes_per_user) VALUES ('a', NULL), ('b', NULL), ('empty', NULL)
      RETURNING id, name)
INSERT INTO codes (book_id, code, status, user_id, redemptions, locked_until, lock_id)
SELECT b.id, upper(b.name) || '-' || g, s.status,
       CASE WHEN s.status <> 'unassigned' THEN u.id END,
       CASE WHEN s.status = 'redeemed' THEN 1 ELSE 0 END,
       CASE WHEN s.status = 'locked' THEN now() + interval '1 hour' END,
       CASE WHEN s.status = 'locked' THEN gen_random_uuid() END
FROM b CROSS JOIN u
CROSS JOIN generate_series(1, 12) AS g
CROSS JOIN LATERAL (SELECT (ARRAY['unassigned', 'assigned', 'locked', 'redeemed'])
                           [1 + (g + length(b.name)) % 4] AS status) AS s
WHERE b.name <> 'empty' AND (b.name = 'a' OR g <= 5)
"""

_SOLD_OUT_PROMO = """
WITH s AS (INSERT INTO stores (name, lat, lng) VALUES ('s', 0, 0) RETURNING id),
p AS (INSERT INTO products (store_id, name, price_cents) SELECT id, 'p', 100 FROM s RETURNING id)
INSERT INTO promos (product_id, title, promo_price_cents, quantity, starts_at, ends_at)
SELECT id, t, 50, 1, now() - interval '1 hour', now() + interval '1 hour'
FROM p CROSS JOIN (VALUES ('sold out'), ('open')) AS v(t)
"""

_SELL = """
WITH unit AS (SELECT u.id, u.promo_id, u.seq FROM promo_units u JOIN promos p ON p.id = u.promo_id
              WHERE p.title = 'sold out'),
r AS (INSERT INTO reservations (promo_id, user_id, unit_id, status, expires_at)
      SELECT unit.promo_id, (SELECT id FROM users), unit.id, 'purchased', now() FROM unit
      RETURNING id, unit_id),
sold AS (UPDATE promo_units u SET state = 'sold', reservation_id = r.id FROM r
         WHERE u.id = r.unit_id)
INSERT INTO promo_sales (promo_id, slot, sold, last_sold_at)
SELECT promo_id, seq % 16, 1, now() FROM unit
"""

_BY_STATE = """
SELECT b.name,
       count(c.*) FILTER (WHERE c.status = 'unassigned') AS unassigned,
       count(c.*) FILTER (WHERE c.status IN ('assigned', 'locked')) AS held,
       count(c.*) FILTER (WHERE c.status = 'redeemed') AS redeemed
FROM books b LEFT JOIN codes c ON c.book_id = b.id GROUP BY b.name ORDER BY b.name
"""

_KEPT = """
SELECT b.name, sum(k.unassigned) AS unassigned, sum(k.held) AS held,
       sum(k.redeemed) AS redeemed, count(*) AS slots
FROM books b JOIN book_code_counts k ON k.book_id = b.id GROUP BY b.name ORDER BY b.name
"""


def _checks(url: str) -> list[str]:
    async def go() -> list[str]:
        conn = await asyncpg.connect(url, statement_cache_size=0)
        try:
            wanted = tuple(
                c for c in CHECKS if c.name in ("book_counts_match_codes", "promo_sold_out_mark")
            )
            return [o.check.name for o in violations(await run_checks(conn, wanted))]
        finally:
            await conn.close()

    return asyncio.run(go())


def test_existing_codes_are_counted_and_sold_out_promos_marked(blank_database: str) -> None:
    url = blank_database
    config = alembic_config(url)
    command.upgrade(config, "0008")
    run_sql(url, _SEED)
    run_sql(url, _SOLD_OUT_PROMO)
    run_sql(url, _SELL)
    expected = [tuple(r) for r in run_sql(url, _BY_STATE)]
    assert sum(r[1] + r[2] + r[3] for r in expected) == 17

    command.upgrade(config, "0009")
    kept = run_sql(url, _KEPT)
    assert [tuple(r)[:4] for r in kept] == expected
    assert {r["slots"] for r in kept} == {16}
    marks = run_sql(url, "SELECT title, sold_out FROM promos ORDER BY title")
    assert [tuple(r) for r in marks] == [("open", False), ("sold out", True)]
    assert _checks(url) == []
    # From here the triggers count.
    run_sql(url, "UPDATE codes SET status = 'unassigned', user_id = NULL, redemptions = 0")
    run_sql(url, "DELETE FROM codes WHERE code LIKE 'B-%'")
    assert _checks(url) == []

    command.downgrade(config, "0008")
    gone = run_sql(
        url,
        "SELECT to_regclass('book_code_counts') IS NULL AS table_gone, NOT EXISTS ("
        " SELECT 1 FROM pg_attribute WHERE attrelid = 'promos'::regclass"
        " AND attname = 'sold_out' AND NOT attisdropped) AS column_gone",
    )
    assert tuple(gone[0]) == (True, True)
    run_sql(url, "INSERT INTO books (name) VALUES ('after downgrade')")  # no trigger left behind
