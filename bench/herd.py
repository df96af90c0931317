"""`make bench-herd`: the thundering herd. 5,000 distinct users reserve one promo of 1,000
units at the same instant, through the service with coalescing on and then off (a fresh
promo each), on one database. Reports the time until the last unit is held, the answers
(exactly 1,000 holds, 4,000 `sold-out`, nothing else), p50/p99, the database transactions
per request and the batch sizes; checks the invariants; writes the "Thundering herd"
section of docs/benchmarks.md.

The client opens its keep-alive connections first (`--connections`, default 1,000), then
releases every request at once; each connection sends its users' requests one after the
other. Raw HTTP/1.1 on asyncio streams: the client's own CPU stays small beside the
service's on a shared box.
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

from app.check import run_checks, violations
from app.core.migrations import upgrade_to_head
from app.core.security import Role, TokenService
from bench.common import SECRET, free_port, machine, service, throwaway_database, write_section
from bench.load import batch_sizes, commits, load_average

LAT, LNG = 40.4168, -3.7038


@dataclass
class Herd:
    mode: str  # "on" or "off"
    seconds_to_sold_out: float
    seconds_total: float
    statuses: dict[str, int]
    p50_ms: float
    p99_ms: float
    commits_per_request: float
    batches: str
    held: int
    sold_out_answers: int


async def seed(url: str, users: int) -> list[tuple[uuid.UUID, str]]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "INSERT INTO users (email, lat, lng, location_updated_at)"
            " SELECT 'herd-' || g || '@example.com', $2, $3, now()"
            " FROM generate_series(1, $1) g RETURNING id",
            users,
            LAT,
            LNG,
        )
    finally:
        await conn.close()
    tokens = TokenService(secret=SECRET, ttl_seconds=86_400)
    return [(r["id"], tokens.issue(r["id"], Role.user)) for r in rows]


async def new_promo(url: str, units: int, tag: str) -> uuid.UUID:
    conn = await asyncpg.connect(url)
    try:
        store = await conn.fetchval(
            "INSERT INTO stores (name, lat, lng) VALUES ($1, $2, $3) RETURNING id", tag, LAT, LNG
        )
        product = await conn.fetchval(
            "INSERT INTO products (store_id, name, price_cents) VALUES ($1, $2, 1000) RETURNING id",
            store,
            tag,
        )
        promo: uuid.UUID = await conn.fetchval(
            "INSERT INTO promos (product_id, title, promo_price_cents, quantity, max_per_user,"
            " starts_at, ends_at) VALUES ($1, $2, 500, $3, 1, now() - interval '1 minute',"
            " now() + interval '1 day') RETURNING id",
            product,
            tag,
            units,
        )
        await conn.execute("VACUUM ANALYZE")
        return promo
    finally:
        await conn.close()


async def _send(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> tuple[int, float, float]:
    """One request on an open connection: (status, seconds it took, when it ended)."""
    started = time.monotonic()
    writer.write(request)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    await reader.readexactly(length)
    ended = time.monotonic()
    return status, ended - started, ended


async def stampede(
    port: int, promo: uuid.UUID, users: list[tuple[uuid.UUID, str]], connections: int
) -> list[tuple[int, float, float]]:
    """Every user's reserve, released at once over `connections` open connections."""
    path = f"/api/v1/promos/{promo}/reserve"
    requests = [
        (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
            "Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
        ).encode()
        for _, token in users
    ]
    opened = [await asyncio.open_connection("127.0.0.1", port) for _ in range(connections)]
    go = asyncio.Event()

    async def lane(i: int) -> list[tuple[int, float, float]]:
        reader, writer = opened[i]
        await go.wait()
        out = [await _send(reader, writer, r) for r in requests[i::connections]]
        writer.close()
        return out

    lanes = [asyncio.ensure_future(lane(i)) for i in range(connections)]
    await asyncio.sleep(0)  # every lane waits on `go` before it is set
    go.set()
    return [answer for done in await asyncio.gather(*lanes) for answer in done]


async def held_units(url: str, promo: uuid.UUID) -> int:
    conn = await asyncpg.connect(url)
    try:
        held: int = await conn.fetchval(
            "SELECT count(*) FROM promo_units WHERE promo_id = $1 AND state = 'held'", promo
        )
        return held
    finally:
        await conn.close()


def run_herd(
    url: str, args: argparse.Namespace, mode: str, users: list[tuple[uuid.UUID, str]]
) -> Herd:
    promo = asyncio.run(new_promo(url, args.units, f"herd {mode}"))
    port = free_port()
    env = {
        "DB_POOL_SIZE": str(args.pool),
        "DB_MAX_OVERFLOW": "0",
        "COALESCE_HOT_PATHS": "true" if mode == "on" else "false",
    }
    with service(url, port, args.workers, env):
        before = asyncio.run(commits(url))
        started = time.monotonic()
        answers = asyncio.run(stampede(port, promo, users, args.connections))
        total = time.monotonic() - started
        committed = asyncio.run(commits(url, settle=True)) - before
        sizes = batch_sizes(port).get("reserve", {})
    statuses: dict[str, int] = {}
    for status, _, _ in answers:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    holds = sorted(ended for status, _, ended in answers if status == 201)
    latencies = sorted(took * 1000 for _, took, _ in answers)
    count = sizes.get("count", 0.0)
    batches = (
        f"{count:,.0f} batches, {sizes.get('sum', 0.0) / count:.1f} requests each on average"
        if count
        else "one transaction per request"
    )
    return Herd(
        mode=mode,
        seconds_to_sold_out=(holds[-1] - started) if holds else float("nan"),
        seconds_total=total,
        statuses=statuses,
        p50_ms=statistics.median(latencies),
        p99_ms=latencies[int(0.99 * (len(latencies) - 1))],
        commits_per_request=committed / len(answers),
        batches=batches,
        held=asyncio.run(held_units(url, promo)),
        sold_out_answers=statuses.get("409", 0),
    )


async def check(url: str) -> list[str]:
    conn = await asyncpg.connect(url)
    try:
        outcomes = await run_checks(conn)
    finally:
        await conn.close()
    return [f"{o.check.name}: {o.rows}" for o in violations(outcomes)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=5_000)
    parser.add_argument("--units", type=int, default=1_000)
    parser.add_argument("--connections", type=int, default=1_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--pool", type=int, default=16)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    load_before = load_average()
    with throwaway_database("herd") as url:
        upgrade_to_head(url)
        users = asyncio.run(seed(url, args.users))
        herds = [run_herd(url, args, mode, users[:]) for mode in ("on", "off")]
        bad = asyncio.run(check(url))
    exact = all(
        h.statuses == {"201": args.units, "409": args.users - args.units} and h.held == args.units
        for h in herds
    )
    for h in herds:
        print(json.dumps(h.__dict__), flush=True)
    print(f"invariants: {bad or 'all hold'}")
    if not args.no_write:
        write(herds, args, load_before, exact, bad)
    summary = ", ".join(
        f"coalescing {h.mode}: sold out in {h.seconds_to_sold_out:.2f} s, p99 {h.p99_ms:.0f} ms"
        for h in herds
    )
    print(f"herd: {'exact' if exact else 'NOT EXACT'}, {summary}")
    if bad or not exact:
        raise SystemExit(1)


def write(
    herds: list[Herd], args: argparse.Namespace, load: str, exact: bool, bad: list[str]
) -> None:
    rows = [
        "| coalescing | sold out after | all answered after | answers | p50 / p99"
        " | commits / request | batches |",
        "|---|---:|---:|---|---:|---:|---|",
    ]
    for h in herds:
        answers = ", ".join(f"{n:,} x {s}" for s, n in sorted(h.statuses.items()))
        rows.append(
            f"| {h.mode} | {h.seconds_to_sold_out:.2f} s | {h.seconds_total:.2f} s | {answers}"
            f" | {h.p50_ms:.0f} / {h.p99_ms:.0f} ms | {h.commits_per_request:.2f} | {h.batches} |"
        )
    body = f"""
`make bench-herd` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC — {machine()}; load average
before {load}. {args.users:,} distinct users, each placed within the promo's radius, reserve
one promo of {args.units:,} units (one per user) at the same instant: the client opens
{args.connections:,} keep-alive connections, then releases every request at once. The
service runs {args.workers} uvicorn workers with {args.pool} pooled connections each,
coalescing on, then off on a fresh promo of the same size.

{chr(10).join(rows)}

{"Exactly" if exact else "NOT exactly"} {args.units:,} holds and {args.users - args.units:,}
`sold-out` (409) each time, no other answer, no unit held twice. Invariants afterwards:
{"all hold" if not bad else "VIOLATED: " + "; ".join(bad)}.
"""
    write_section("Thundering herd", body)


if __name__ == "__main__":
    main()
