"""`make bench-books`: what one random assign costs as a book grows and as it runs out. Three
books on one database: 10,000 free codes; 10,000,000 free codes; 2,000,000 codes of which
99.9 % are already assigned. Each gets the same number of assigns, one after another on one
connection (`book_assign_random`, the statement every assign runs, batched or not), timed
per call; then `EXPLAIN (ANALYZE, BUFFERS)` of the claim on each. Writes the "Book size and
exhaustion" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg

from app.core.migrations import upgrade_to_head
from bench.common import machine, throwaway_database, write_section
from bench.load import load_average

USERS = 1_000
_ASSIGN = "SELECT code FROM book_assign_random($1, $2, $2, '{}')"
# The claim's own statement (the single assign's first step), for its plan.
_CLAIM = """
EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON)
SELECT c.id FROM codes c
WHERE c.book_id = $1 AND c.status = 'unassigned' AND c.rand_key >= $2
ORDER BY c.rand_key LIMIT 1
"""


@dataclass
class Book:
    name: str
    codes: int
    free: int
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    mean_ms: float = 0.0
    buffers: int = 0


async def fill(conn: asyncpg.Connection, book: Book, users: list[uuid.UUID]) -> uuid.UUID:
    book_id: uuid.UUID = await conn.fetchval(
        "INSERT INTO books (name, max_codes_per_user) VALUES ($1, NULL) RETURNING id", book.name
    )
    taken = book.codes - book.free
    started = time.monotonic()
    # The first `taken` codes held by the users in turn, as assigns would leave them (one
    # insert, so the book's counters move once), then the free ones.
    await conn.execute(
        "INSERT INTO codes (book_id, code, status, user_id, assigned_at)"
        " SELECT $1, $2 || g, 'assigned', ($4::uuid[])[1 + g % $5], now()"
        " FROM generate_series(1, $3) g",
        book_id,
        f"{book.name[:3].upper()}-",
        taken,
        users,
        len(users),
    )
    await conn.execute(
        "INSERT INTO codes (book_id, code)"
        " SELECT $1, $2 || g FROM generate_series($3::int, $4::int) g",
        book_id,
        f"{book.name[:3].upper()}-",
        taken + 1,
        book.codes,
    )
    await conn.execute("VACUUM ANALYZE codes")
    print(
        f"{book.name}: {book.codes:,} codes, {book.free:,} free,"
        f" in {time.monotonic() - started:.0f} s"
    )
    return book_id


async def measure(url: str, books: list[Book], assigns: int) -> None:
    conn = await asyncpg.connect(url)
    try:
        users = [
            r["id"]
            for r in await conn.fetch(
                "INSERT INTO users (email) SELECT 'size-' || g || '@example.com'"
                " FROM generate_series(1, $1) g RETURNING id",
                USERS,
            )
        ]
        ids = [await fill(conn, book, users) for book in books]
        for book, book_id in zip(books, ids, strict=True):
            took = []
            for i in range(assigns):
                started = time.perf_counter()
                code = await conn.fetchval(_ASSIGN, book_id, users[i % len(users)])
                took.append((time.perf_counter() - started) * 1000)
                assert code is not None, f"{book.name}: no code at assign {i}"
            took.sort()
            book.p50_ms = statistics.median(took)
            book.p99_ms = took[int(0.99 * (len(took) - 1))]
            book.mean_ms = statistics.fmean(took)
            plan = await conn.fetchval(_CLAIM, book_id, 0.5)
            top = json.loads(plan)[0]["Plan"]
            book.buffers = top.get("Shared Hit Blocks", 0) + top.get("Shared Read Blocks", 0)
            print(
                f"{book.name}: p50 {book.p50_ms:.2f} ms, p99 {book.p99_ms:.2f} ms,"
                f" mean {book.mean_ms:.2f} ms, claim {book.buffers} buffers",
                flush=True,
            )
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--assigns", type=int, default=1_000)
    parser.add_argument("--large", type=int, default=10_000_000)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    books = [
        Book("small", 10_000, 10_000),
        Book("large", args.large, args.large),
        Book("exhausted", 2_000_000, 2_000),
    ]
    load_before = load_average()
    with throwaway_database("books") as url:
        upgrade_to_head(url)
        asyncio.run(measure(url, books, args.assigns))
    base = books[0]
    rows = [
        "| book | codes | free before | p50 | p99 | mean | vs the small book (mean)"
        " | claim buffers |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for b in books:
        rows.append(
            f"| {b.name} | {b.codes:,} | {b.free:,} | {b.p50_ms:.2f} ms | {b.p99_ms:.2f} ms"
            f" | {b.mean_ms:.2f} ms | {b.mean_ms / base.mean_ms:.2f}x | {b.buffers} |"
        )
    spread = max(b.mean_ms for b in books) / min(b.mean_ms for b in books)
    print(f"books: mean assign within {100 * (spread - 1):.0f} % of each other")
    if args.no_write:
        return
    body = f"""
`make bench-books` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC — {machine()}; load average
before {load_before}. {args.assigns:,} random assigns per book, one after another on one
connection (`book_assign_random`: the caller's lock, the claim from a random start on the
partial index of free codes, the history row; autocommit), users in turn; then the claim's
plan (`EXPLAIN (ANALYZE, BUFFERS)`, buffers of its top node). The exhausted book's free
codes are the last 0.1 % by id, so every one of them sits among assigned ones.

{chr(10).join(rows)}

The slowest book's mean is {spread:.2f}x the fastest's. The claim reads the partial index
`ix_codes_book_id_rand_key` (`WHERE status = 'unassigned'`): its depth grows with the log of
the free codes, and assigned codes are not in it at all, so neither the book's size nor how
much of it is gone changes how many pages one claim reads (the exhausted book's plan is
taken after its assigns took every free code: the extra pages are index entries of codes
assigned since the last `VACUUM`). What a large book changes is where those pages are:
its index and heap outgrow `shared_buffers`, so more of a claim's pages come from the
operating system's cache, which shows in the mean and the p99 more than in the median.
"""
    write_section("Book size and exhaustion", body)


if __name__ == "__main__":
    main()
