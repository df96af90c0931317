"""Every hot and listing statement of the service, with the parameters a request would send
against the scale data set, and what bounds its cost.

The SQL is imported from the modules that run it, never copied, so what is measured is what
is served. `measure()` runs one statement under `EXPLAIN (ANALYZE, BUFFERS)` in a
transaction that is rolled back (writes included), twice, and keeps the warm run.

Bounds:
- `page`: the work is one page of the answer, whatever the size of the tables, the book or
  the caller's own rows. `tests/test_scale.py` fails when such a statement's buffers at the
  large size exceed `growth` times its buffers at the small size, per row shown (plus
  `slack`): B-trees one level deeper and rows spread over more pages stay well inside it,
  a scan of a table does not.
- `caller`: grows with the caller's own rows (a user's history, notifications); reported,
  not held to the rule.
- `density`: a page of a rare state costs a page over that state's share of the book (1 %
  free codes: a hundred rows read per row shown); reported.
- `sweep`: a pass over what runs now (the worker's over the running promos, a user's list
  of the active books); reported.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import asyncpg
import orjson
from sqlalchemy import TextClause
from sqlalchemy.dialects.postgresql import asyncpg as asyncpg_dialect

from app.books import assign, history, redeem, service
from app.books import mine as mine_sql
from app.books.schemas import CodeStatus
from app.core import idempotency, outbox
from app.notifications import fanout
from app.notifications import service as inbox
from app.promos import listings, reservations, soldout
from bench.scale.data import BIG_BOOK, HEAVY, SIDE_BOOK, user_id

Args = Callable[[asyncpg.Connection], Awaitable[list[Any]]]
Bound = Literal["page", "caller", "density", "sweep"]


@dataclass(frozen=True)
class Statement:
    name: str  # the request (or job) that runs it
    sql: str
    args: Args  # runs inside the measuring transaction: it may write (a reserve to buy)
    bound: Bound = "page"
    growth: float = 4.0
    slack: int = 16
    setup: str | None = None  # a statement the request runs first (a lock), same params


@dataclass(frozen=True)
class Measure:
    buffers: int
    ms: float
    rows: int
    scans: str  # the scan nodes of the plan, in order


def allowed_buffers(stmt: Statement, small: Measure, large: Measure) -> float:
    """The page rule's ceiling for the large size: `growth` times the small size's buffers
    per row shown, for the rows the large size shows (a window that holds ten rows at the
    small size fills its page at the large one), counting at least one buffer per row (a
    page of rows spread over a big table touches a heap page per row where a small table
    keeps them on a few), plus `slack`."""
    per_row = max(small.buffers, small.rows) / max(small.rows, 1)
    rows = max(large.rows, small.rows, 1)
    return stmt.growth * per_row * rows + stmt.slack


def within_rule(stmt: Statement, small: Measure, large: Measure) -> bool:
    return large.buffers <= allowed_buffers(stmt, small, large)


def _positional(clause: TextClause) -> tuple[str, list[str]]:
    """A SQLAlchemy `text()` as asyncpg SQL, with the order of its named parameters."""
    compiled = clause.compile(dialect=asyncpg_dialect.dialect())
    return str(compiled), list(compiled.positiontup or [])


def _args(*values: Any) -> Args:
    async def fixed(_: asyncpg.Connection) -> list[Any]:
        return list(values)

    return fixed


async def _one(conn: asyncpg.Connection, sql: str, *args: Any) -> Any:
    value = await conn.fetchval(sql, *args)
    assert value is not None, f"the data set has no probe for: {sql}"
    return value


# Probes: rows the requests act on, found by the primary key's order (cheap at any size).
async def _code(conn: asyncpg.Connection, status: str, live: bool = False) -> str:
    """A code of the big book in `status` (`live`: a lock that has not lapsed)."""
    value: str = await _one(
        conn,
        "SELECT code FROM codes WHERE book_id = $1 AND status = $2"
        + (" AND locked_until > now()" if live else "")
        + " ORDER BY id OFFSET 3 LIMIT 1",
        BIG_BOOK,
        status,
    )
    return value


async def _middle_code_id(conn: asyncpg.Connection, user: uuid.UUID) -> int:
    """The caller's code in the middle of its codes: a cursor halfway through its pages."""
    ids = await conn.fetchval(
        "SELECT array_agg(id ORDER BY id) FROM codes WHERE user_id = $1 AND book_id = $2",
        user,
        BIG_BOOK,
    )
    return int(ids[len(ids) // 2])


async def _history_window(conn: asyncpg.Connection, rows: int, back: float) -> tuple[Any, Any]:
    """A window of `rows` history rows ending `back` (0..1) of the way from the newest row."""
    total = await conn.fetchval("SELECT max(id) FROM redemption_history")
    end = int(total * (1 - back))
    bounds = await conn.fetchrow(
        "SELECT (SELECT at FROM redemption_history WHERE id = $1) AS since,"
        " (SELECT at FROM redemption_history WHERE id = $2) AS until",
        end - rows,
        end,
    )
    assert bounds is not None
    return bounds["since"], bounds["until"]


def _codes(status: CodeStatus | None, *, mine: bool = False, bound: Bound = "page") -> Statement:
    who = "GET /me/codes" if mine else "GET /books/{id}/codes"
    query = f"?status={status.value}" if status is not None else ""

    async def args(conn: asyncpg.Connection) -> list[Any]:
        if mine:
            return [None, HEAVY, await _middle_code_id(conn, HEAVY), 51]
        return [BIG_BOOK, None, None, 51]

    return Statement(
        f"{who}{query}",
        service.codes_sql(user=True, status=status, extra_columns=mine_sql.BOOK_CONTEXT)
        if mine
        else service.codes_sql(user=False, status=status),
        args,
        bound,
    )


async def _user_books_args(conn: asyncpg.Connection) -> list[Any]:
    return [HEAVY, 100]


Window = Callable[[asyncpg.Connection], Awaitable[tuple[Any, Any]]]


def _history(
    name: str, bound: Bound = "page", *, window: Window | None = None, **filters: Any
) -> Statement:
    """A history listing: `filters` by name (a value, or a probe to run), `window` the
    (since, until) probe of a closed time window."""
    keys = ("book_id", "code", "user_id", "action")
    bounded = datetime.now(UTC) if window is not None else None  # only its presence counts
    shape = history.HistoryFilter(
        book_id=filters.get("book_id"),
        code="probe" if "code" in filters else None,
        user_id=filters.get("user_id"),
        action=filters.get("action"),
        since=bounded,
        until=bounded,
    )

    async def args(conn: asyncpg.Connection) -> list[Any]:
        values = [filters.get(key) for key in keys]
        values = [await v(conn) if callable(v) else v for v in values]
        since, until = await window(conn) if window is not None else (None, None)
        return [*values, since, until, None, 51]

    return Statement(name, history.list_sql(shape), args, bound)


async def _window_rows(conn: asyncpg.Connection) -> tuple[Any, Any]:
    return await _history_window(conn, 1_000, 0.05)


async def _day_back(conn: asyncpg.Connection) -> tuple[datetime, datetime]:
    newest = await conn.fetchval("SELECT max(at) FROM redemption_history")
    return newest - timedelta(days=21), newest - timedelta(days=20)


async def _heavy_code(conn: asyncpg.Connection) -> str:
    value: str = await _one(
        conn, "SELECT code FROM codes WHERE user_id = $1 ORDER BY id LIMIT 1", HEAVY
    )
    return value


async def _reserve_args(conn: asyncpg.Connection) -> list[Any]:
    promo = await _one(
        conn,
        "SELECT id FROM promos WHERE ends_at > now() + interval '2 hours'"
        " AND NOT EXISTS (SELECT 1 FROM promo_segments s WHERE s.promo_id = promos.id)"
        " ORDER BY ends_at LIMIT 1",
    )
    # Someone standing at the promo's store.
    await conn.execute(
        "UPDATE users u SET lat = s.lat, lng = s.lng FROM promos p"
        " JOIN products pr ON pr.id = p.product_id JOIN stores s ON s.id = pr.store_id"
        " WHERE p.id = $1 AND u.id = $2",
        promo,
        user_id(3),
    )
    return [promo, user_id(3), 60]


async def _purchase_args(conn: asyncpg.Connection) -> list[Any]:
    promo, user, ttl = await _reserve_args(conn)
    await conn.execute(reservations._LOCK, promo, user)
    row = await conn.fetchrow(reservations._CLAIM, promo, user, ttl)
    assert row is not None and row["hold_id"] is not None, "no hold to buy"
    return [row["hold_id"], user]


_INBOX_SQL, _INBOX_KEYS = _positional(inbox._INBOX)
_SINCE_SQL, _SINCE_KEYS = _positional(inbox._SINCE)
_LATEST_SQL, _ = _positional(inbox._LATEST_ID)


async def _inbox_args(conn: asyncpg.Connection) -> list[Any]:
    values = {"user_id": HEAVY, "before": None, "status": None, "limit": 51}
    return [values[k] for k in _INBOX_KEYS]


async def _since_args(conn: asyncpg.Connection) -> list[Any]:
    ids = await conn.fetchval(
        "SELECT array_agg(id ORDER BY id) FROM notifications WHERE user_id = $1", HEAVY
    )
    values = {"user_id": HEAVY, "after": ids[len(ids) // 2], "limit": 100}
    return [values[k] for k in _SINCE_KEYS]


def _code_args(status: str, *tail: Any, live: bool = False) -> Args:
    """[a code of the big book in `status`, *tail]."""

    async def args(conn: asyncpg.Connection) -> list[Any]:
        return [await _code(conn, status, live), *tail]

    return args


async def _assign_random_args(conn: asyncpg.Connection) -> list[Any]:
    return [BIG_BOOK, user_id(3), 0.5, HEAVY, "{}"]


async def _assign_code_args(conn: asyncpg.Connection) -> list[Any]:
    return [BIG_BOOK, user_id(3), await _code(conn, "unassigned"), HEAVY, "{}"]


# What an admin sends after the code: (owner, ttl, lock_id, actor) to lock, (owner, as admin,
# lock_id, actor) to unlock, (owner, lock_id, actor, details) to redeem.
_LOCK_TAIL = (None, None, None, HEAVY)
_UNLOCK_TAIL = (None, True, None, HEAVY)
_REDEEM_TAIL = (None, None, HEAVY, "{}")

STATEMENTS: tuple[Statement, ...] = (
    # Books and codes: the hot paths, and what the console polls.
    Statement("GET /books/{id}, PATCH (stats)", service._STATS_SQL, _args([BIG_BOOK])),
    Statement("GET /books (stats of the page)", service._STATS_SQL, _args([BIG_BOOK, SIDE_BOOK])),
    Statement("GET /codes/{code}", service._GET_CODE, _code_args("assigned", None)),
    Statement(
        "POST /books/{id}/assign",
        assign._ASSIGN_RANDOM,
        _assign_random_args,
        setup=assign.LOCK_BOOK_USER,
    ),
    Statement(
        "POST /codes/{code}/assign",
        assign._ASSIGN_SPECIFIC,
        _assign_code_args,
        setup=assign.LOCK_BOOK_USER,
    ),
    Statement("POST /codes/{code}/lock", redeem._LOCK, _code_args("assigned", *_LOCK_TAIL)),
    Statement(
        "POST /codes/{code}/unlock", redeem._UNLOCK, _code_args("locked", *_UNLOCK_TAIL, live=True)
    ),
    Statement("POST /codes/{code}/redeem", redeem._REDEEM, _code_args("assigned", *_REDEEM_TAIL)),
    Statement("POST /codes/{code}/validate", redeem._STATE, _code_args("assigned")),
    # Listings of codes.
    _codes(None),
    _codes(CodeStatus.locked),
    _codes(CodeStatus.assigned),
    _codes(CodeStatus.redeemed),
    _codes(CodeStatus.unassigned, bound="density"),
    _codes(None, mine=True),
    Statement("GET /me/books", mine_sql.MY_BOOKS_SQL, _user_books_args, "sweep"),
    # History.
    _history("GET /history"),
    _history("GET /history?action=rolled_back", action="rolled_back"),
    _history("GET /history?action=assigned", action="assigned"),
    _history("GET /history?since&until (1,000 rows, 5 % back)", window=_window_rows),
    _history("GET /history?since&until (a day, 20 days back)", window=_day_back),
    _history("GET /history?book_id", book_id=BIG_BOOK),
    _history("GET /history?code", code=_heavy_code),
    _history("GET /me/history", user_id=HEAVY),
    _history("GET /me/history?action=redeemed", "caller", user_id=HEAVY, action="redeemed"),
    # Promos.
    Statement("GET /promos/running", listings._RUNNING, _args(51, None, None)),
    Statement("GET /me/promos", listings._ELIGIBLE, _args(user_id(3), 51)),
    Statement(
        "POST /promos/{id}/reserve", reservations._CLAIM, _reserve_args, setup=reservations._LOCK
    ),
    Statement("POST /reservations/{id}/purchase", reservations._PURCHASE, _purchase_args),
    Statement(
        "GET /me/reservations", reservations._LIST, _args(HEAVY, 51, None, None, None), "caller"
    ),
    # Notifications.
    Statement("GET /me/notifications", _INBOX_SQL, _inbox_args),
    Statement("stream replay (notifications since)", _SINCE_SQL, _since_args, "caller"),
    Statement("stream start (latest notification id)", _LATEST_SQL, _args(HEAVY), "caller"),
    Statement("stream start, a user with no notification", _LATEST_SQL, _args(user_id(0))),
    # The worker.
    Statement("worker: claim due outbox jobs", outbox._CLAIM, _args("scale", 8)),
    Statement("worker: purge expired idempotency keys (50)", idempotency._PURGE, _args(24, 50)),
    Statement(
        "worker: purge finished outbox jobs (50)", outbox._PURGE_FINISHED, _args(72 * 3600, 50)
    ),
    Statement(
        "worker: purge audiences of finished fan-outs (50)",
        fanout._PURGE_AUDIENCE,
        _args(72 * 3600, 50),
    ),
    Statement("worker: mark sold-out promos", soldout._MARK, _args(1000), "sweep"),
)


def _scans(plan: dict[str, Any]) -> list[str]:
    out: list[str] = []
    kind = plan.get("Node Type", "")
    if "Scan" in kind and kind not in ("CTE Scan", "Subquery Scan", "Function Scan"):
        target = plan.get("Index Name") or plan.get("Relation Name") or ""
        if kind == "Seq Scan" or "Parallel" in plan.get("Node Type", ""):
            kind = ("Parallel " if plan.get("Parallel Aware") else "") + kind
        label = f"{kind} {target}".strip()
        if label not in out:
            out.append(label)
    for child in plan.get("Plans", []):
        for label in _scans(child):
            if label not in out:
                out.append(label)
    return out


async def _explain(conn: asyncpg.Connection, stmt: Statement) -> Measure:
    tx = conn.transaction()
    await tx.start()
    try:
        args = await stmt.args(conn)
        if stmt.setup is not None:
            await conn.execute(stmt.setup, *args[:2])
        raw = await conn.fetchval("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + stmt.sql, *args)
    finally:
        await tx.rollback()
    doc = (orjson.loads(raw) if isinstance(raw, str | bytes) else raw)[0]
    plan = doc["Plan"]
    return Measure(
        buffers=int(plan.get("Shared Hit Blocks", 0)) + int(plan.get("Shared Read Blocks", 0)),
        ms=round(float(doc["Execution Time"]), 2),
        rows=int(plan.get("Actual Rows", 0)),
        scans=", ".join(_scans(plan)),
    )


async def measure(conn: asyncpg.Connection, stmt: Statement) -> Measure:
    """The statement's warm run (the first one reads the pages into the cache)."""
    await _explain(conn, stmt)
    return await _explain(conn, stmt)


async def measure_all(url: str) -> dict[str, Measure]:
    """Every statement of `STATEMENTS` measured on the database at `url`."""
    conn = await asyncpg.connect(url)
    try:
        return {s.name: await measure(conn, s) for s in STATEMENTS}
    finally:
        await conn.close()
