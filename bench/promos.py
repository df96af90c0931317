"""Flash promos benchmark: eligibility latency and reserve+purchase throughput.

Seeds 10,000 stores (each with a product) spread over a 40 km square, 1,000 running promos
on random products (radius 2 km, one in five limited to a rule segment) and users placed at
random in the same square; starts the service (`python -m app serve`, rate limits off) and
drives it over HTTP with httpx:

1. `GET /api/v1/me/promos` from 8 concurrent clients for a fixed time: p50/p99 latency.
2. reserve + purchase from 32 concurrent clients for a fixed time, each pair by a fresh
   user on one of 20 promos with plenty of units: pairs/s and errors; then the invariants
   (sold <= quantity, every sold unit has exactly one purchased reservation).

Results go to the "Flash promos" section of docs/benchmarks.md.

    python bench/promos.py [--seconds 10] [--workers 1] [--no-write]

Uses DATABASE_URL's server (a throwaway database is created and dropped), else a private
embedded PostgreSQL in a temporary directory.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.core.migrations import upgrade_to_head
from app.core.security import Role, TokenService
from app.core.settings import Settings
from app.promos import rules
from bench.common import (
    SECRET,
    free_port,
    service,
    throwaway_database,
    write_section,
)

STORES = 10_000
PROMOS = 1_000
EYE_USERS = 2_000  # users asking GET /me/promos
BUY_PROMOS = 20
BUY_UNITS = 20_000  # units per reserve+purchase promo (never runs out in a short run)
BUY_USERS = 60_000  # one fresh user per reserve+purchase pair
# A 40 km square around Madrid.
LAT0, LNG0, SPAN_LAT, SPAN_LNG = 40.24, -3.94, 0.36, 0.47


@dataclass
class Latency:
    samples: list[float] = field(default_factory=list)
    errors: Counter[int] = field(default_factory=Counter)
    items: int = 0

    def pct(self, q: float) -> float:
        ordered = sorted(self.samples)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else 0.0


@dataclass
class Throughput:
    pairs: int = 0
    seconds: float = 0.0
    errors: Counter[str] = field(default_factory=Counter)
    latency: Latency = field(default_factory=Latency)

    @property
    def rate(self) -> float:
        return self.pairs / self.seconds if self.seconds else 0.0


async def seed(url: str) -> tuple[list[uuid.UUID], list[uuid.UUID], list[uuid.UUID]]:
    """Stores, products, running promos and users; returns (eye users, buyers, buy promos)."""
    conn = await asyncpg.connect(url)
    try:
        square = (LAT0, SPAN_LAT, LNG0, SPAN_LNG)
        await conn.execute(
            """
            WITH s AS (
                INSERT INTO stores (name, lat, lng)
                SELECT 'Store ' || g, $1 + random() * $2, $3 + random() * $4
                FROM generate_series(1, $5) AS g RETURNING id
            )
            INSERT INTO products (store_id, name, price_cents) SELECT id, 'Croissant', 250 FROM s
            """,
            *square,
            STORES,
        )
        segment = await conn.fetchval(
            "INSERT INTO segments (name, kind, rules)"
            " VALUES ('vegans', 'rule', '{\"tags_any\": [\"vegan\"]}') RETURNING id"
        )
        await conn.execute(
            """
            WITH p AS (
                INSERT INTO promos (product_id, title, promo_price_cents, quantity,
                                    starts_at, ends_at, radius_m)
                SELECT id, 'Deal', 100, 10, now() - interval '1 minute',
                       now() + interval '1 day', 2000
                FROM (SELECT id FROM products ORDER BY random() LIMIT $1) AS x
                RETURNING id
            )
            INSERT INTO promo_segments (promo_id, segment_id)
            SELECT id, $2 FROM p WHERE random() < 0.2
            """,
            PROMOS,
            segment,
        )
        eyes = await conn.fetch(
            """
            INSERT INTO users (email, role, lat, lng, location_updated_at, tags)
            SELECT 'eye-' || g || '@bench.example', 'user', $1 + random() * $2,
                   $3 + random() * $4, now(),
                   CASE WHEN random() < 0.5 THEN ARRAY['vegan'] ELSE '{}'::text[] END
            FROM generate_series(1, $5) AS g RETURNING id
            """,
            *square,
            EYE_USERS,
        )
        # Buy promos: one store at the centre, where every buyer stands.
        center = (LAT0 + SPAN_LAT / 2, LNG0 + SPAN_LNG / 2)
        buy_promos = await conn.fetch(
            """
            WITH s AS (INSERT INTO stores (name, lat, lng) VALUES ('Centre', $1, $2)
                       RETURNING id),
            pr AS (INSERT INTO products (store_id, name, price_cents)
                   SELECT id, 'Bread', 120 FROM s RETURNING id)
            INSERT INTO promos (product_id, title, promo_price_cents, quantity, starts_at,
                                ends_at, radius_m)
            SELECT pr.id, 'Big deal ' || g, 60, $3, now() - interval '1 minute',
                   now() + interval '1 day', 2000
            FROM pr, generate_series(1, $4) AS g RETURNING id
            """,
            *center,
            BUY_UNITS,
            BUY_PROMOS,
        )
        buyers = await conn.fetch(
            """
            INSERT INTO users (email, role, lat, lng, location_updated_at)
            SELECT 'buyer-' || g || '@bench.example', 'user', $1, $2, now()
            FROM generate_series(1, $3) AS g RETURNING id
            """,
            *center,
            BUY_USERS,
        )
        await conn.execute("ANALYZE")
        return [r["id"] for r in eyes], [r["id"] for r in buyers], [r["id"] for r in buy_promos]
    finally:
        await conn.close()


def _tokens(ids: list[uuid.UUID]) -> list[str]:
    tokens = TokenService.from_settings(Settings(jwt_secret=SECRET, _env_file=None))
    return [tokens.issue(i, Role.user) for i in ids]


async def eligibility(base: str, tokens: list[str], seconds: float, clients: int) -> Latency:
    result = Latency()
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=10) as http:
        for token in tokens[:clients]:  # warm up every connection and plan cache
            await http.get("/api/v1/me/promos", headers={"Authorization": f"Bearer {token}"})
        stop = time.perf_counter() + seconds

        async def client() -> None:
            while time.perf_counter() < stop:
                headers = {"Authorization": f"Bearer {random.choice(tokens)}"}
                t = time.perf_counter()
                resp = await http.get("/api/v1/me/promos", headers=headers)
                result.samples.append(time.perf_counter() - t)
                if resp.status_code != 200:
                    result.errors[resp.status_code] += 1
                else:
                    result.items += len(resp.json())

        await asyncio.gather(*(client() for _ in range(clients)))
    return result


async def reserve_purchase(
    base: str, tokens: list[str], promos: list[uuid.UUID], seconds: float, clients: int
) -> Throughput:
    result = Throughput()
    fresh = iter(tokens)
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=10) as http:
        start = time.perf_counter()
        stop = start + seconds

        async def client() -> None:
            while time.perf_counter() < stop:
                token = next(fresh, None)
                if token is None:
                    return
                headers = {"Authorization": f"Bearer {token}"}
                t = time.perf_counter()
                held = await http.post(
                    f"/api/v1/promos/{random.choice(promos)}/reserve", headers=headers
                )
                if held.status_code != 201:
                    result.errors[f"reserve {held.status_code}"] += 1
                    continue
                bought = await http.post(
                    f"/api/v1/reservations/{held.json()['id']}/purchase", headers=headers
                )
                result.latency.samples.append(time.perf_counter() - t)
                if bought.status_code != 200:
                    result.errors[f"purchase {bought.status_code}"] += 1
                    continue
                result.pairs += 1

        await asyncio.gather(*(client() for _ in range(clients)))
        result.seconds = time.perf_counter() - start
    return result


async def invariants(url: str) -> dict[str, int]:
    conn = await asyncpg.connect(url)
    try:
        row = await conn.fetchrow(
            f"""
            SELECT
              (SELECT count(*) FROM promos p WHERE {rules.SOLD} > p.quantity) AS oversold,
              (SELECT count(*) FROM promos p WHERE {rules.SOLD} <> (SELECT count(*)
                 FROM promo_units u WHERE u.promo_id = p.id AND u.state = 'sold'))
                 AS counter_mismatch,
              (SELECT count(*) FROM promo_units u WHERE u.state = 'sold'
                 AND (SELECT count(*) FROM reservations r
                      WHERE r.unit_id = u.id AND r.status = 'purchased') <> 1) AS bad_units,
              (SELECT count(*) FROM reservations WHERE status = 'purchased') AS purchased
            """
        )
        return dict(row)
    finally:
        await conn.close()


def summary(
    eye: Latency,
    buy: Throughput,
    checks: dict[str, int],
    seconds: float,
    workers: int,
    load: float,
) -> str:
    """The body of the "Flash promos" section."""
    ok = checks["oversold"] == checks["counter_mismatch"] == checks["bad_units"] == 0
    avg_items = eye.items / max(1, len(eye.samples) - sum(eye.errors.values()))
    lines = [
        f"`make bench-promos` on {datetime.now(UTC):%Y-%m-%d} ({platform.machine()}, "
        f"{os.cpu_count()} cores; PostgreSQL, the service ({workers} uvicorn worker"
        f"{'s' if workers > 1 else ''}) and the load generator share the box; rate limits"
        f" off). {STORES:,} stores in a 40 km square, {PROMOS:,} running promos (radius 2 km,"
        " one in five limited to a rule segment), users placed at random in the square."
        f" Each phase runs {seconds:.0f} s over HTTP (httpx). Load average when the run"
        f" started: {load:.1f} (other work on the box inflates the latencies).",
        "",
        "| measure | clients | result | p50 | p99 | errors |",
        "|---|---:|---:|---:|---:|---:|",
        f"| `GET /me/promos` (avg {avg_items:.1f} promos per answer) | 8 |"
        f" {len(eye.samples) / seconds:,.0f} req/s | {eye.pct(0.5):.1f} ms |"
        f" {eye.pct(0.99):.1f} ms | {sum(eye.errors.values())} |",
        f"| reserve + purchase (fresh user each, {BUY_PROMOS} promos) | 32 |"
        f" {buy.rate:,.0f} pairs/s | {buy.latency.pct(0.5):.1f} ms |"
        f" {buy.latency.pct(0.99):.1f} ms | {sum(buy.errors.values())} |",
        "",
        f"Goal: eligibility p99 < 50 ms: **{'met' if eye.pct(0.99) < 50 else 'NOT MET'}**"
        f" ({eye.pct(0.99):.1f} ms). Afterwards: {checks['purchased']:,} purchased"
        f" reservations; oversold promos {checks['oversold']}, sales counter mismatches"
        f" {checks['counter_mismatch']}, sold units without exactly one purchase"
        f" {checks['bad_units']} ({'invariants hold' if ok else 'INVARIANTS BROKEN'}).",
        "Reserve+purchase latency is per pair (two requests). Eligibility reads stores through"
        " the GiST index on `ll_to_earth(lat, lng)` (`earth_box` of the largest running radius)"
        " and checks each candidate promo's own radius and segments.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    with throwaway_database("bench-promos") as url:
        upgrade_to_head(url)
        t = time.perf_counter()
        eyes, buyers, buy_promos = asyncio.run(seed(url))
        print(f"seeded in {time.perf_counter() - t:.1f}s", flush=True)
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        with service(url, port, args.workers, {"DB_POOL_SIZE": "20"}):
            eye = asyncio.run(eligibility(base, _tokens(eyes), args.seconds, 8))
            print(
                f"GET /me/promos: {len(eye.samples) / args.seconds:,.0f} req/s, "
                f"p50 {eye.pct(0.5):.1f} ms, p99 {eye.pct(0.99):.1f} ms, "
                f"errors {dict(eye.errors)}",
                flush=True,
            )
            buy = asyncio.run(reserve_purchase(base, _tokens(buyers), buy_promos, args.seconds, 32))
            print(
                f"reserve+purchase: {buy.rate:,.0f} pairs/s, p50 {buy.latency.pct(0.5):.1f} ms,"
                f" p99 {buy.latency.pct(0.99):.1f} ms, errors {dict(buy.errors)}",
                flush=True,
            )
        checks = asyncio.run(invariants(url))
        print(f"invariants: {checks}", flush=True)
    if not args.no_write:
        write_section("Flash promos", summary(eye, buy, checks, args.seconds, args.workers, load))


if __name__ == "__main__":
    main()
