"""How fast the worker's sealer and the verifier go: history rows sealed per second in one
round, and rows verified per second, at a few block sizes. Prints a table; writes nothing.

`make bench-seal` (uses DATABASE_URL's server if set, else a private embedded one)."""

from __future__ import annotations

import asyncio
import time

import asyncpg

from app.books.seal import HistorySealer, verify
from app.core.migrations import upgrade_to_head
from bench.common import throwaway_database

SIZES = (1_000, 10_000, 100_000)

_ROWS = """
INSERT INTO redemption_history (code_id, book_id, user_id, action, actor_id, details)
SELECT $1, $2, $3, (ARRAY['assigned', 'locked', 'redeemed'])[1 + g % 3], $3,
       jsonb_build_object('order_ref', 'order-' || g)
FROM generate_series(1, $4) AS g
"""


async def measure(url: str) -> list[tuple[int, float, float]]:
    conn = await asyncpg.connect(url)
    try:
        book = await conn.fetchval("INSERT INTO books (name) VALUES ('seal') RETURNING id")
        user = await conn.fetchval(
            "INSERT INTO users (email) VALUES ('seal@example.com') RETURNING id"
        )
        code = await conn.fetchval(
            "INSERT INTO codes (book_id, code, status, user_id) VALUES ($1, 'SEAL-1',"
            " 'assigned', $2) RETURNING id",
            book,
            user,
        )
        sealer = HistorySealer()
        out = []
        for size in SIZES:
            await conn.execute(_ROWS, code, book, user, size)
            await sealer.round(conn)  # notes the rows
            started = time.perf_counter()
            block = await sealer.round(conn)
            sealed_in = time.perf_counter() - started
            assert block is not None and block.rows == size, block
            started = time.perf_counter()
            verdict = await verify(conn)
            verified_in = time.perf_counter() - started
            assert verdict.ok
            out.append((size, sealed_in, verdict.rows / verified_in))
        return out
    finally:
        await conn.close()


def main() -> None:
    with throwaway_database("seal") as url:
        upgrade_to_head(url)
        results = asyncio.run(measure(url))
    print("| rows in the block | seal round | rows sealed/s | rows verified/s (whole chain) |")
    print("|---:|---:|---:|---:|")
    for size, sealed_in, verified_per_s in results:
        print(
            f"| {size:,} | {sealed_in * 1000:.0f} ms | {size / sealed_in:,.0f}"
            f" | {verified_per_s:,.0f} |"
        )


if __name__ == "__main__":
    main()
