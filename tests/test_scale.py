"""A page costs a page at any size. Every statement of `bench/scale/statements.py` runs under
`EXPLAIN (ANALYZE, BUFFERS)` on a small and on a moderate data set (a 100,000-code book,
250,000 history rows, ...; built in SQL in seconds); a `page` statement may use at the
moderate size at most its stated multiple of its small-size buffers per row shown. A change
that brings a scan back (an index dropped, a predicate the planner cannot use, a count of
the whole book) multiplies them by the size of a table and fails here. `make bench-scale`
runs the same statements at the issue's full size."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from app.core.db import libpq_url
from app.core.migrations import upgrade_to_head
from app.core.settings import Settings
from bench.scale import data
from bench.scale.statements import (
    STATEMENTS,
    Measure,
    Statement,
    allowed_buffers,
    measure_all,
    within_rule,
)

Measured = dict[str, tuple[Measure, Measure]]


def _admin(url: str, sql: str) -> None:
    async def run() -> None:
        conn = await asyncpg.connect(url, statement_cache_size=0)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run())


@pytest.fixture(scope="module")
def measured(settings: Settings) -> Iterator[Measured]:
    """Both data sets in databases of their own (the second a copy of the first's empty,
    migrated schema), measured, then dropped."""
    server = libpq_url(settings.database_url or "")
    parts = urlsplit(server)
    tag = uuid.uuid4().hex[:6]
    names = {size: f"cf_scale_{size}_{tag}" for size in ("small", "moderate")}
    urls = {
        size: urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))
        for size, name in names.items()
    }
    try:
        _admin(server, f'CREATE DATABASE "{names["small"]}"')
        upgrade_to_head(urls["small"])
        _admin(server, f'CREATE DATABASE "{names["moderate"]}" TEMPLATE "{names["small"]}"')
        asyncio.run(data.load(urls["small"], data.SMALL, log=False))
        asyncio.run(data.load(urls["moderate"], data.MODERATE, log=False))
        small = asyncio.run(measure_all(urls["small"]))
        moderate = asyncio.run(measure_all(urls["moderate"]))
        yield {name: (small[name], moderate[name]) for name in small}
    finally:
        for name in names.values():
            _admin(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


PAGE = [s for s in STATEMENTS if s.bound == "page"]


@pytest.mark.parametrize("stmt", PAGE, ids=[s.name for s in PAGE])
def test_page_statement_does_not_grow_with_the_data(stmt: Statement, measured: Measured) -> None:
    small, moderate = measured[stmt.name]
    allowed = allowed_buffers(stmt, small, moderate)
    assert within_rule(stmt, small, moderate), (
        f"{stmt.name}: {moderate.buffers} buffers at the moderate size, {small.buffers} at the"
        f" small one (allowed {allowed:.0f}); plan: {moderate.scans}"
    )


def test_book_stats_read_the_same_pages_for_any_book_size(measured: Measured) -> None:
    """The console polls a book's stats: a 100,000-code book costs what a 1,000-code one
    does (counters, and an index range of the live locks)."""
    small, moderate = measured["GET /books/{id}, PATCH (stats)"]
    assert moderate.buffers <= small.buffers + 4, (small, moderate)
    assert "Scan codes" not in moderate.scans and "pk_codes" not in moderate.scans, moderate


def test_every_statement_ran_at_both_sizes(measured: Measured) -> None:
    assert set(measured) == {s.name for s in STATEMENTS}
