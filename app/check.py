"""Invariant checker: SQL that must return no rows. `python -m app check` runs it.

Each check names the promise it guards; any row it returns is a violation. Checks whose
tables (or `table.column`s) are not in this database are skipped, so the checker runs on any
schema version.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from app.audit.ledgers import LEDGERS
from app.books import rules as books
from app.core import chain
from app.promos import rules as promos

# A transaction left idle this long holds its locks and snapshot for nothing.
IDLE_IN_TRANSACTION_LIMIT = "5 seconds"
# Violating rows reported per check: enough to see the pattern, bounded on a broken table.
ROWS_SHOWN = 50


@dataclass(frozen=True)
class Check:
    name: str
    promise: str
    sql: str
    tables: tuple[str, ...]
    # A check that is not one query: returns the violating rows itself.
    run: Callable[[asyncpg.Connection], Awaitable[list[dict[str, Any]]]] | None = None


@dataclass
class Outcome:
    check: Check
    rows: list[dict[str, Any]] = field(default_factory=list)
    skipped: bool = False

    @property
    def ok(self) -> bool:
        return self.skipped or not self.rows


def _chain_check(ledger: chain.Ledger) -> Check:
    async def broken(conn: asyncpg.Connection) -> list[dict[str, Any]]:
        [verdict] = await chain.verify(conn, [ledger])
        if verdict.ok:
            return []
        return [{"first_bad_block": verdict.first_bad_block, "blocks": verdict.blocks}]

    return Check(
        f"{ledger.name}_chain_intact",
        f"the sealed {ledger.table} is what was sealed: every block's Merkle root and the"
        " chain of block hashes recompute (app/core/chain.py)",
        "",
        (ledger.blocks,),
        run=broken,
    )


_NET_REDEMPTIONS = """
    SELECT h.book_id, h.code_id,
           count(*) FILTER (WHERE h.action = 'redeemed')
           - count(*) FILTER (WHERE h.action = 'rolled_back') AS net
    FROM redemption_history h GROUP BY h.book_id, h.code_id
"""

CHECKS: tuple[Check, ...] = (
    Check(
        "code_assigned_once",
        "a code is assigned to at most one user, once, and history says to whom",
        """
        SELECT c.code, c.status, c.user_id, count(h.id) AS assigned_rows,
               array_agg(DISTINCT h.user_id) FILTER (WHERE h.id IS NOT NULL) AS history_users
        FROM codes c
        LEFT JOIN redemption_history h
            ON h.book_id = c.book_id AND h.code_id = c.id AND h.action = 'assigned'
        GROUP BY c.book_id, c.id
        HAVING count(h.id) <> (CASE WHEN c.status = 'unassigned' THEN 0 ELSE 1 END)
            OR (count(h.id) = 1 AND (array_agg(h.user_id))[1] IS DISTINCT FROM c.user_id)
        """,
        ("codes", "redemption_history"),
    ),
    Check(
        "code_redemptions_match_history",
        "redemptions equal redeemed minus rolled-back history rows",
        f"""
        SELECT c.code, c.redemptions, coalesce(n.net, 0) AS history_net
        FROM codes c
        LEFT JOIN ({_NET_REDEMPTIONS}) n ON n.book_id = c.book_id AND n.code_id = c.id
        WHERE c.redemptions <> coalesce(n.net, 0)
        """,
        ("codes", "redemption_history"),
    ),
    Check(
        "code_redemptions_within_limit",
        "no code is redeemed more than its book allows; `redeemed` exactly at the limit",
        """
        SELECT c.code, c.status, c.redemptions, b.max_redemptions_per_code
        FROM codes c JOIN books b ON b.id = c.book_id
        WHERE c.redemptions > b.max_redemptions_per_code
           OR (c.status = 'redeemed') <> (c.redemptions = b.max_redemptions_per_code)
        """,
        ("codes", "books"),
    ),
    Check(
        "codes_per_user_limit",
        "no user holds more codes of a book than max_codes_per_user",
        """
        SELECT c.book_id, c.user_id, count(*) AS held, b.max_codes_per_user
        FROM codes c JOIN books b ON b.id = c.book_id
        WHERE c.user_id IS NOT NULL AND b.max_codes_per_user IS NOT NULL
        GROUP BY c.book_id, c.user_id, b.max_codes_per_user
        HAVING count(*) > b.max_codes_per_user
        """,
        ("codes", "books"),
    ),
    Check(
        "redemptions_per_user_limit",
        "no user redeems more in a book than max_redemptions_per_user",
        """
        SELECT c.book_id, c.user_id, sum(c.redemptions) AS redeemed, b.max_redemptions_per_user
        FROM codes c JOIN books b ON b.id = c.book_id
        WHERE c.user_id IS NOT NULL AND b.max_redemptions_per_user IS NOT NULL
        GROUP BY c.book_id, c.user_id, b.max_redemptions_per_user
        HAVING sum(c.redemptions) > b.max_redemptions_per_user
        """,
        ("codes", "books"),
    ),
    Check(
        "live_lock_has_history",
        "a live lock was written to history as the code's latest lock transition",
        f"""
        SELECT c.code, c.locked_until, last.action AS last_lock_action
        FROM codes c
        LEFT JOIN LATERAL (
            SELECT h.action FROM redemption_history h
            WHERE h.book_id = c.book_id AND h.code_id = c.id
              AND h.action IN ('locked', 'unlocked', 'redeemed')
            ORDER BY h.id DESC LIMIT 1
        ) last ON true
        WHERE {books.LOCK_LIVE} AND last.action IS DISTINCT FROM 'locked'
        """,
        ("codes", "redemption_history"),
    ),
    Check(
        "book_counts_match_codes",
        "the counts a book's stats read equal its codes, state by state",
        f"""
        WITH counted AS ({books.CODES_BY_STORED_STATE}),
        kept AS (
            SELECT book_id, sum(unassigned) AS unassigned, sum(held) AS held,
                   sum(redeemed) AS redeemed
            FROM book_code_counts GROUP BY book_id
        )
        SELECT coalesce(c.book_id, k.book_id) AS book_id,
               c.unassigned, k.unassigned AS kept_unassigned, c.held, k.held AS kept_held,
               c.redeemed, k.redeemed AS kept_redeemed
        FROM counted c FULL JOIN kept k ON k.book_id = c.book_id
        WHERE coalesce(c.unassigned, 0) <> coalesce(k.unassigned, 0)
           OR coalesce(c.held, 0) <> coalesce(k.held, 0)
           OR coalesce(c.redeemed, 0) <> coalesce(k.redeemed, 0)
        """,
        ("codes", "book_code_counts"),
    ),
    Check(
        "promo_sold_out_mark",
        "a promo marked sold out has sold every unit (the mark only narrows an index)",
        """
        SELECT p.id, p.quantity,
               (SELECT coalesce(sum(sa.sold), 0) FROM promo_sales sa WHERE sa.promo_id = p.id)
                   AS sold
        FROM promos p
        WHERE p.sold_out
          AND (SELECT coalesce(sum(sa.sold), 0) FROM promo_sales sa WHERE sa.promo_id = p.id)
              < p.quantity
        """,
        ("promos.sold_out", "promo_sales"),
    ),
    Check(
        "promo_not_oversold",
        "sold units never exceed the quantity; each sales slot counts its sold units",
        f"""
        WITH units AS (
            SELECT u.promo_id, {promos.sales_slot("u.seq")} AS slot, count(*) AS sold
            FROM promo_units u
            WHERE u.state = 'sold' GROUP BY 1, 2
        ),
        slots AS (
            SELECT coalesce(u.promo_id, sa.promo_id) AS promo_id,
                   coalesce(u.slot, sa.slot) AS slot,
                   coalesce(u.sold, 0) AS sold_units, coalesce(sa.sold, 0) AS counted
            FROM units u
            FULL JOIN promo_sales sa ON sa.promo_id = u.promo_id AND sa.slot = u.slot
        )
        SELECT p.id, p.quantity, sum(s.sold_units) AS sold_units, sum(s.counted) AS counted,
               array_agg(s.slot ORDER BY s.slot)
                   FILTER (WHERE s.sold_units <> s.counted) AS slots_off
        FROM slots s JOIN promos p ON p.id = s.promo_id
        GROUP BY p.id
        HAVING sum(s.sold_units) > p.quantity OR bool_or(s.sold_units <> s.counted)
        """,
        ("promos", "promo_units", "promo_sales"),
    ),
    Check(
        "sold_unit_has_one_purchase",
        "every sold unit has exactly one purchased reservation, and vice versa",
        """
        SELECT u.id AS unit_id, u.state, count(r.id) AS purchased
        FROM promo_units u
        LEFT JOIN reservations r ON r.unit_id = u.id AND r.status = 'purchased'
        GROUP BY u.id
        HAVING (u.state = 'sold') <> (count(r.id) = 1) OR count(r.id) > 1
        """,
        ("promo_units", "reservations"),
    ),
    Check(
        "held_unit_points_at_its_reservation",
        "a held unit names a reservation of that unit that was held",
        """
        SELECT u.id AS unit_id, u.reservation_id, r.status
        FROM promo_units u LEFT JOIN reservations r ON r.id = u.reservation_id
        WHERE u.state = 'held' AND (r.id IS NULL OR r.unit_id <> u.id OR r.status <> 'held')
        """,
        ("promo_units", "reservations"),
    ),
    Check(
        "one_live_hold_per_user",
        "a user never holds two live reservations on one promo",
        f"""
        SELECT r.promo_id, r.user_id, count(*) AS live
        FROM reservations r WHERE {promos.HOLD_LIVE}
        GROUP BY r.promo_id, r.user_id HAVING count(*) > 1
        """,
        ("reservations",),
    ),
    Check(
        "one_notification_per_user_day",
        "at most one notification per user per local day",
        """
        SELECT user_id, day, count(*) FROM notifications
        GROUP BY user_id, day HAVING count(*) > 1
        """,
        ("notifications",),
    ),
    Check(
        "no_advisory_locks_left",
        "no advisory lock outlives its transaction",
        """
        SELECT l.pid, l.objid, a.state, a.query
        FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
        WHERE l.locktype = 'advisory' AND l.granted AND l.pid <> pg_backend_pid()
          AND a.datname = current_database() AND a.state = 'idle'
        """,
        (),
    ),
    Check(
        "no_idle_in_transaction",
        f"no connection sits idle inside a transaction for over {IDLE_IN_TRANSACTION_LIMIT}",
        f"""
        SELECT pid, state, now() - state_change AS idle_for, query
        FROM pg_stat_activity
        WHERE datname = current_database() AND pid <> pg_backend_pid()
          AND state LIKE 'idle in transaction%'
          AND now() - state_change > interval '{IDLE_IN_TRANSACTION_LIMIT}'
        """,
        (),
    ),
    Check(
        "purchase_logged_once",
        "every purchase is in the purchase log once, with its promo, unit and buyer, and the"
        " log holds nothing else",
        """
        SELECT coalesce(l.reservation_id, r.id) AS reservation_id, l.id AS log_id,
               r.status, l.promo_id AS logged_promo, r.promo_id, l.unit_id AS logged_unit,
               r.unit_id, l.user_id AS logged_user, r.user_id
        FROM purchase_log l
        FULL JOIN (SELECT * FROM reservations WHERE status = 'purchased') r
            ON r.id = l.reservation_id
        WHERE l.id IS NULL OR r.id IS NULL
           OR (l.promo_id, l.unit_id, l.user_id) <> (r.promo_id, r.unit_id, r.user_id)
        """,
        ("purchase_log", "reservations"),
    ),
    Check(
        "promo_sales_match_purchase_log",
        "each promo's sales slots add up to its purchases in the purchase log",
        """
        WITH logged AS (SELECT promo_id, count(*) AS n FROM purchase_log GROUP BY promo_id),
        counted AS (SELECT promo_id, sum(sold) AS n FROM promo_sales GROUP BY promo_id)
        SELECT coalesce(l.promo_id, c.promo_id) AS promo_id, l.n AS logged, c.n AS counted
        FROM logged l FULL JOIN counted c ON c.promo_id = l.promo_id
        WHERE coalesce(l.n, 0) <> coalesce(c.n, 0)
        """,
        ("purchase_log", "promo_sales"),
    ),
    *(_chain_check(ledger) for ledger in LEDGERS),
)


async def _present(conn: asyncpg.Connection, name: str) -> bool:
    table, _, column = name.partition(".")
    found: bool = await conn.fetchval(
        "SELECT to_regclass($1) IS NOT NULL AND ($2 = '' OR EXISTS ("
        " SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass($1) AND attname = $2"
        " AND NOT attisdropped))",
        table,
        column,
    )
    return found


async def run_checks(conn: asyncpg.Connection, checks: tuple[Check, ...] = CHECKS) -> list[Outcome]:
    """Run every check on one connection; returns one outcome per check."""
    outcomes = []
    for check in checks:
        present = [await _present(conn, name) for name in check.tables]
        if not all(present):
            outcomes.append(Outcome(check, skipped=True))
            continue
        if check.run is not None:
            outcomes.append(Outcome(check, (await check.run(conn))[:ROWS_SHOWN]))
            continue
        rows = await conn.fetch(check.sql)
        outcomes.append(Outcome(check, [dict(r) for r in rows[:ROWS_SHOWN]]))
    return outcomes


def violations(outcomes: list[Outcome]) -> list[Outcome]:
    return [o for o in outcomes if not o.ok]
