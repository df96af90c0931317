"""What sealing the redemption history and the purchase log costs, and the lag it keeps.
Prints tables; writes nothing.

1. Backlog: a log of 1,000,000 history rows (200,000 purchases) written before any sealer
   ran, sealed as the worker does it (blocks of at most `MAX_BLOCK_ROWS`, back to back).
2. Profile: `EXPLAIN (ANALYZE, BUFFERS)` of a round's statements on that log, for a block
   of 4,000 rows.
3. Block cost: one round sealing 1,000 and 10,000 new rows of each log, and the whole
   chain verified.
4. Steady state: rows written at the write rate of `make bench` (small transactions every
   10 ms), the worker's sealing pass every `SEAL_SECONDS` (1 s): how long passes take and
   how old a row is when sealed (its block's `sealed_at` minus the row's `at`).
5. Cost to the hot paths: the service's own hot-path statements (lock then redeem of
   multi-use codes, reserve then purchase of a promo's units) flat out, in phases with the
   sealer off and on (every second), alternating: cycles per second in each, and the lag of
   the rows written while it was on.

The hot paths run in this process on asyncpg connections of their own (no HTTP), and so
does the sealer, as it runs inside an API process by default. `make bench-seal` (uses
DATABASE_URL's server if set, else a private embedded one)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import asyncpg
import psutil
import structlog

from app.audit.ledgers import LEDGERS
from app.books import redeem
from app.books.seal import HISTORY
from app.core.chain import MAX_BLOCK_ROWS, Ledger, Sealer, seal, verify
from app.core.migrations import upgrade_to_head
from app.promos import reservations
from app.promos.purchase_log import PURCHASES
from bench.common import throwaway_database
from bench.load import load_average

BACKLOG = {HISTORY.name: 1_000_000, PURCHASES.name: 200_000}
SIZES = (1_000, MAX_BLOCK_ROWS)
PROFILE_ROWS = 4_000
# `make bench` (docs/benchmarks.md, Hot paths): the service answers about 2,000 lock+redeem
# requests/s (one history row each) and 1,500 reserve+purchase requests/s (a purchase per
# two): written a little above both.
HISTORY_ROWS_PER_S = 2_200
PURCHASES_PER_S = 800
TICK_S = 0.01
STEADY_S = 30.0
SEAL_SECONDS = 1.0
PHASE_S = 5.0
PHASES = 6  # pairs of (off, on)
CLIENTS = 8  # connections per hot path
UNITS = 300_000

_HISTORY_ROWS = """
INSERT INTO redemption_history (code_id, book_id, user_id, action, actor_id, details)
SELECT $1, $2, $3, (ARRAY['assigned', 'locked', 'redeemed'])[1 + g % 3], $3,
       jsonb_build_object('order_ref', 'order-' || g)
FROM generate_series(1, $4) AS g
"""
_PURCHASE_ROWS = """
INSERT INTO purchase_log (reservation_id, promo_id, unit_id, user_id, price_cents, currency)
SELECT gen_random_uuid(), $1, g, $2, 500, 'EUR' FROM generate_series(1, $3) AS g
"""


@dataclass
class Seeded:
    book_code: tuple[int, uuid.UUID, uuid.UUID]  # code id, book, user: for synthetic rows
    promo: uuid.UUID
    redeemers: list[tuple[uuid.UUID, str]]  # (user, its multi-use code)
    buyers: list[uuid.UUID]


async def seed(conn: asyncpg.Connection) -> Seeded:
    users = [
        r["id"]
        for r in await conn.fetch(
            "INSERT INTO users (email, lat, lng) SELECT 'seal-' || g || '@example.com',"
            " 40.4168, -3.7038 FROM generate_series(1, $1) g RETURNING id",
            2 * CLIENTS + 1,
        )
    ]
    book = await conn.fetchval(
        "INSERT INTO books (name, max_codes_per_user, max_redemptions_per_code)"
        " VALUES ('seal', NULL, 1000000000) RETURNING id"
    )
    codes = await conn.fetch(
        "INSERT INTO codes (book_id, code, status, user_id, assigned_at)"
        " SELECT $1, 'SEAL-' || n, 'assigned', u, now()"
        " FROM unnest($2::uuid[]) WITH ORDINALITY AS s(u, n) RETURNING id, code, user_id",
        book,
        users[: CLIENTS + 1],
    )
    await conn.execute(
        "INSERT INTO redemption_history (code_id, book_id, user_id, action, actor_id)"
        " SELECT id, book_id, user_id, 'assigned', user_id FROM codes WHERE book_id = $1",
        book,
    )
    store = await conn.fetchval(
        "INSERT INTO stores (name, lat, lng) VALUES ('seal', 40.4168, -3.7038) RETURNING id"
    )
    product = await conn.fetchval(
        "INSERT INTO products (store_id, name, price_cents) VALUES ($1, 'seal', 1000) RETURNING id",
        store,
    )
    promo = await conn.fetchval(
        "INSERT INTO promos (product_id, title, promo_price_cents, quantity, max_per_user,"
        " starts_at, ends_at) VALUES ($1, 'seal', 500, $2, $2, now() - interval '1 minute',"
        " now() + interval '1 day') RETURNING id",
        product,
        UNITS,
    )
    first = codes[0]
    return Seeded(
        book_code=(first["id"], book, first["user_id"]),
        promo=promo,
        redeemers=[(r["user_id"], r["code"]) for r in codes[1:]],
        buyers=users[CLIENTS + 1 :],
    )


async def append(conn: asyncpg.Connection, ledger: Ledger, s: Seeded, n: int) -> None:
    """`n` synthetic rows in the log (rows like the hot paths write, without the hot paths)."""
    if ledger is HISTORY:
        await conn.execute(_HISTORY_ROWS, *s.book_code, n)
    else:
        await conn.execute(_PURCHASE_ROWS, s.promo, s.buyers[0], n)


async def seal_all(conn: asyncpg.Connection, sealer: Sealer) -> tuple[int, float, float]:
    """Rounds until everything visible is sealed: (blocks, total seconds, longest round)."""
    blocks, total, longest = 0, 0.0, 0.0
    while True:
        started = time.perf_counter()
        block = await sealer.round(conn)
        took = time.perf_counter() - started
        total, longest = total + took, max(longest, took)
        blocks += block is not None
        if sealer.pending is None and not sealer.backlog:
            return blocks, total, longest


async def backlog_and_blocks(url: str, s: Seeded) -> tuple[list[str], list[str], list[str]]:
    conn = await asyncpg.connect(url)
    backlog_rows, block_rows, plans = [], [], []
    try:
        for ledger in LEDGERS:
            n = BACKLOG[ledger.name]
            await append(conn, ledger, s, n)
            await conn.execute(f"VACUUM ANALYZE {ledger.table}")
            sealer = Sealer(ledger)
            blocks, total, longest = await seal_all(conn, sealer)
            backlog_rows.append(
                f"| {ledger.name} | {n:,} | {blocks} | {total:.2f} s | {n / total:,.0f}"
                f" | {longest * 1000:.0f} ms |"
            )
            await append(conn, ledger, s, PROFILE_ROWS)
            tip = await conn.fetchval(f"SELECT max(last_id) FROM {ledger.blocks}")
            for name, sql, args in (
                ("state", ledger.state_sql, ([], ledger.name)),
                ("leaves", ledger.leaves_sql, (tip, tip + PROFILE_ROWS, MAX_BLOCK_ROWS)),
            ):
                async with conn.transaction():
                    plan = await conn.fetch("EXPLAIN (ANALYZE, BUFFERS) " + sql, *args)
                plans.append(f"-- {ledger.name}: {name} ({n:,} rows in the log)")
                plans.extend(r[0] for r in plan)
            await seal_all(conn, sealer)
            for size in SIZES:
                await append(conn, ledger, s, size)
                await sealer.round(conn)  # notes the rows
                started = time.perf_counter()
                block = await sealer.round(conn)
                sealed_in = time.perf_counter() - started
                assert block is not None and block.rows == size, block
                started = time.perf_counter()
                [verdict] = await verify(conn, [ledger])
                verified_in = time.perf_counter() - started
                assert verdict.ok
                block_rows.append(
                    f"| {ledger.name} | {size:,} | {sealed_in * 1000:.0f} ms"
                    f" | {size / sealed_in:,.0f} | {verdict.rows:,}"
                    f" | {verdict.rows / verified_in:,.0f} |"
                )
        return backlog_rows, block_rows, plans
    finally:
        await conn.close()


# --- the hot paths -------------------------------------------------------------------------


@dataclass
class Counts:
    redeem_cycles: int = 0
    purchases: int = 0
    errors: list[str] = field(default_factory=list)


# The hot paths' own statements, each its own transaction (autocommit), with the fewest
# round trips the service makes: lock, redeem (the book limits no one's redemptions, so no
# holder lock), reserve (one call), purchase.
async def lock_redeem(conn: asyncpg.Connection, user: uuid.UUID, code: str) -> None:
    locked = await conn.fetchrow(redeem._LOCK, code, user, None, None, user)
    assert locked is not None, code
    done = await conn.fetchrow(redeem._REDEEM, code, user, locked["lock_id"], user, "{}")
    assert done is not None, code


async def reserve_purchase(conn: asyncpg.Connection, promo: uuid.UUID, user: uuid.UUID) -> None:
    held = await reservations.reserve(conn, promo, user, 60)
    await reservations.purchase(conn, held.reservation.id, user)


async def drive(url: str, s: Seeded, seconds: float, counts: Counts) -> None:
    """Every client runs its hot path flat out for `seconds`."""
    deadline = time.monotonic() + seconds

    async def client(step: Callable[[asyncpg.Connection], Awaitable[None]]) -> str:
        conn = await asyncpg.connect(url)
        try:
            while time.monotonic() < deadline:
                await step(conn)
            return ""
        except (asyncpg.PostgresError, OSError) as exc:
            return f"{type(exc).__name__}: {exc}"
        finally:
            await conn.close()

    async def redeems(conn: asyncpg.Connection, user: uuid.UUID, code: str) -> None:
        await lock_redeem(conn, user, code)
        counts.redeem_cycles += 1

    async def buys(conn: asyncpg.Connection, user: uuid.UUID) -> None:
        await reserve_purchase(conn, s.promo, user)
        counts.purchases += 1

    tasks = [client(lambda c, u=u, k=k: redeems(c, u, k)) for u, k in s.redeemers]
    tasks += [client(lambda c, u=u: buys(c, u)) for u in s.buyers]
    counts.errors += [e for e in await asyncio.gather(*tasks) if e]


async def write_at_rate(url: str, s: Seeded, seconds: float) -> tuple[int, int]:
    """History rows and purchase-log rows at `HISTORY_ROWS_PER_S` and `PURCHASES_PER_S`,
    a transaction every `TICK_S` on each of two connections; the rows written."""
    history, purchases = await asyncpg.connect(url), await asyncpg.connect(url)
    written = [0, 0]

    async def writer(conn: asyncpg.Connection, ledger: Ledger, per_s: float, i: int) -> None:
        started = time.monotonic()
        while (elapsed := time.monotonic() - started) < seconds:
            due = int(per_s * elapsed) - written[i]
            if due > 0:
                await append(conn, ledger, s, due)
                written[i] += due
            await asyncio.sleep(TICK_S)

    try:
        await asyncio.gather(
            writer(history, HISTORY, HISTORY_ROWS_PER_S, 0),
            writer(purchases, PURCHASES, PURCHASES_PER_S, 1),
        )
    finally:
        await history.close()
        await purchases.close()
    return written[0], written[1]


@dataclass
class Sealing:
    """The worker's sealing pass, every `SEAL_SECONDS`, timed; with the CPU it used: its
    database backend's (when the server runs on this machine) and this process's during the
    passes (an upper bound: other coroutines may run while a pass awaits the database)."""

    rounds: list[float] = field(default_factory=list)
    backend_cpu_s: float | None = None
    python_cpu_s: float = 0.0
    elapsed_s: float = 0.0

    async def run(self, url: str, stop: asyncio.Event) -> None:
        conn = await asyncpg.connect(url)
        backend = _backend(await conn.fetchval("SELECT pg_backend_pid()"))
        cpu_before, began = _cpu(backend), time.perf_counter()
        sealers = [Sealer(ledger) for ledger in LEDGERS]
        try:
            while not stop.is_set():
                started, cpu = time.perf_counter(), time.process_time()
                behind = await seal(conn, sealers, SEAL_SECONDS)
                self.rounds.append(time.perf_counter() - started)
                self.python_cpu_s += time.process_time() - cpu
                if not behind:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), timeout=SEAL_SECONDS)
            cpu_after, self.elapsed_s = _cpu(backend), time.perf_counter() - began
            if cpu_before is not None and cpu_after is not None:
                self.backend_cpu_s = cpu_after - cpu_before
        finally:
            await conn.close()

    def cpu(self) -> str:
        """CPU per second of the sealer's run."""
        wall = self.elapsed_s or 1.0
        python = f"{1000 * self.python_cpu_s / wall:.1f} ms/s in this process"
        if self.backend_cpu_s is None:
            return f"sealer CPU: {python} (the database's: not on this machine)"
        return (
            f"sealer CPU: {1000 * self.backend_cpu_s / wall:.1f} ms/s in its database backend,"
            f" {python}"
        )


def _backend(pid: int) -> psutil.Process | None:
    try:
        return psutil.Process(pid)
    except (psutil.Error, OSError):
        return None


def _cpu(process: psutil.Process | None) -> float | None:
    if process is None:
        return None
    try:
        times = process.cpu_times()
    except (psutil.Error, OSError):
        return None
    return float(times.user + times.system)


async def sealed_lag(
    conn: asyncpg.Connection, ledger: Ledger, ranges: list[tuple[int, int]]
) -> str:
    """p50 / p99 / max of (its block's sealed_at - the row's at) for the rows with ids in
    the ranges (each `(after, up_to]`), and how many of them are not sealed yet."""
    row = await conn.fetchrow(
        f"""
        SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY lag) AS p50,
               percentile_cont(0.99) WITHIN GROUP (ORDER BY lag) AS p99,
               max(lag) AS worst, count(*) FILTER (WHERE lag IS NULL) AS unsealed,
               count(*) AS n
        FROM (SELECT extract(epoch FROM b.sealed_at - t.at)::float8 AS lag
              FROM unnest($1::bigint[], $2::bigint[]) AS r(after, up_to)
              JOIN {ledger.table} t ON t.id > r.after AND t.id <= r.up_to
              LEFT JOIN LATERAL (SELECT sealed_at FROM {ledger.blocks} b
                                 WHERE b.last_id >= t.id ORDER BY b.last_id LIMIT 1) b ON true
             ) AS x
        """,
        [after for after, _ in ranges],
        [up_to for _, up_to in ranges],
    )
    assert row is not None
    if not row["n"]:
        return "no rows"
    return (
        f"{row['n']:,} rows, sealed {row['p50']:.2f} / {row['p99']:.2f} / {row['worst']:.2f} s"
        f" (p50 / p99 / max) after written, {row['unsealed']} not yet"
    )


async def tops(conn: asyncpg.Connection) -> dict[str, int]:
    return {
        ledger.name: await conn.fetchval(f"SELECT coalesce(max(id), 0) FROM {ledger.table}")
        for ledger in LEDGERS
    }


def ms(values: list[float], q: float) -> str:
    if not values:
        return "-"
    ordered = sorted(values)
    return f"{ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000:.1f}"


async def steady(url: str, s: Seeded) -> list[str]:
    conn = await asyncpg.connect(url)
    try:
        before = await tops(conn)
        stop, sealing = asyncio.Event(), Sealing()
        sealer = asyncio.create_task(sealing.run(url, stop))
        started = time.monotonic()
        history, purchases = await write_at_rate(url, s, STEADY_S)
        wall = time.monotonic() - started
        await asyncio.sleep(3 * SEAL_SECONDS)  # the last rows' rounds
        stop.set()
        await sealer
        after = await tops(conn)
        lines = [
            f"written for {wall:.0f} s: {history / wall:,.0f} history rows/s,"
            f" {purchases / wall:,.0f} purchase-log rows/s",
            f"sealing passes (both logs) every {SEAL_SECONDS:.0f} s: {len(sealing.rounds)},"
            f" p50 {ms(sealing.rounds, 0.5)} ms, p99 {ms(sealing.rounds, 0.99)} ms,"
            f" longest {ms(sealing.rounds, 1.0)} ms;"
            f" {100 * sum(sealing.rounds) / wall:.1f}% of the time in a pass",
            sealing.cpu(),
        ]
        for ledger in LEDGERS:
            ids = (before[ledger.name], after[ledger.name])
            lines.append(f"{ledger.name}: {await sealed_lag(conn, ledger, [ids])}")
        return lines
    finally:
        await conn.close()


async def off_and_on(url: str, s: Seeded) -> list[str]:
    table = [
        "| phase | sealer | lock+redeem cycles/s | purchases/s | sealing passes | errors |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    rates: dict[bool, list[float]] = {False: [], True: []}
    sealed: dict[str, list[tuple[int, int]]] = {ledger.name: [] for ledger in LEDGERS}
    runs: list[Sealing] = []
    conn = await asyncpg.connect(url)
    try:
        for phase in range(PHASES):
            for on in (False, True) if phase % 2 == 0 else (True, False):
                stop, sealing, counts = asyncio.Event(), Sealing(), Counts()
                sealer = asyncio.create_task(sealing.run(url, stop)) if on else None
                before = await tops(conn)
                started = time.monotonic()
                await drive(url, s, PHASE_S, counts)
                wall = time.monotonic() - started
                # The phase's last rows get their rounds (with the sealer on); the same
                # pause with it off.
                await asyncio.sleep(3 * SEAL_SECONDS)
                stop.set()
                if sealer is not None:
                    await sealer
                    runs.append(sealing)
                    after = await tops(conn)
                    for ledger in LEDGERS:
                        sealed[ledger.name].append((before[ledger.name], after[ledger.name]))
                rates[on].append((counts.redeem_cycles + counts.purchases) / wall)
                table.append(
                    f"| {phase + 1} | {'every 1 s' if on else 'off'}"
                    f" | {counts.redeem_cycles / wall:,.0f} | {counts.purchases / wall:,.0f}"
                    f" | {len(sealing.rounds) if on else '-'} | {len(counts.errors)} |"
                )
        on, off = statistics.median(rates[True]), statistics.median(rates[False])
        table.append("")
        table.append(
            f"all cycles/s, median of the phases: sealer on {on:,.0f}, off {off:,.0f}:"
            f" **{on / off:.2f}x**"
        )
        together = Sealing(
            rounds=[r for run in runs for r in run.rounds],
            backend_cpu_s=None
            if any(run.backend_cpu_s is None for run in runs)
            else sum(run.backend_cpu_s or 0.0 for run in runs),
            python_cpu_s=sum(run.python_cpu_s for run in runs),
            elapsed_s=sum(run.elapsed_s for run in runs),
        )
        table.append(f"while on, {together.cpu()}")
        for ledger in LEDGERS:
            lag = await sealed_lag(conn, ledger, sealed[ledger.name])
            table.append(f"{ledger.name}, written while the sealer was on: {lag}")
        return table
    finally:
        await conn.close()


async def measure(url: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        s = await seed(conn)
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()
    print(f"load average at start: {load_average()}\n", flush=True)
    backlog_rows, block_rows, plans = await backlog_and_blocks(url, s)
    print(f"## A backlog, sealed in blocks of at most {MAX_BLOCK_ROWS:,} rows, back to back\n")
    print("| log | rows | blocks | took | rows/s | longest round |")
    print("|---|---:|---:|---:|---:|---:|")
    print("\n".join(backlog_rows))
    print(f"\n## A round's statements, for a block of {PROFILE_ROWS:,} rows\n")
    print("\n".join(plans))
    print("\n## One round sealing a block, and the whole chain verified\n")
    print("| log | rows in the block | seal round | rows sealed/s | chain rows | verified/s |")
    print("|---|---:|---:|---:|---:|---:|")
    print("\n".join(block_rows), flush=True)
    print("\n## Steady state at the write rate of `make bench`\n")
    print("\n".join(await steady(url, s)), flush=True)
    print(f"\n## Hot paths flat out ({CLIENTS} connections each), sealer off and on\n")
    print("\n".join(await off_and_on(url, s)))
    conn = await asyncpg.connect(url)
    try:
        verdicts = await verify(conn, LEDGERS)
    finally:
        await conn.close()
    print(
        "\nchains afterwards: "
        + ", ".join(f"{v.log} ok={v.ok} ({v.rows:,} rows)" for v in verdicts)
    )
    print(f"load average at end: {load_average()}")


def main() -> None:
    # Not a line per sealed block.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    with throwaway_database("seal") as url:
        upgrade_to_head(url)
        asyncio.run(measure(url))


if __name__ == "__main__":
    main()
