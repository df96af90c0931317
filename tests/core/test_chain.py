"""The sealer of any append-only log (`app/core/chain.py`), on a log of its own made for the
test: a backlog is sealed in blocks of at most `max_rows`, round after round, so a round's
work is bounded by the rows it seals; the worker runs those rounds back to back within its
budget; two sealers at once never fork a chain; the lag gauge says how old the oldest row
not sealed is."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
from sqlalchemy.ext.asyncio import AsyncConnection

from app.core.chain import Ledger, Sealer, seal, verify
from app.core.db import libpq_url
from app.core.metrics import REGISTRY
from app.core.settings import Settings
from tests.helpers import wait_for


async def _raw(conn: AsyncConnection) -> asyncpg.Connection:
    return (await conn.get_raw_connection()).driver_connection  # type: ignore[return-value]


async def _scratch(raw: asyncpg.Connection) -> Ledger:
    """A log and its blocks table, shaped like the service's, with a name of their own."""
    name = f"scratch_{uuid.uuid4().hex[:8]}"
    await raw.execute(
        f"CREATE TABLE {name} (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
        " body text NOT NULL, at timestamptz NOT NULL DEFAULT now())"
    )
    await raw.execute(f"CREATE TABLE {name}_blocks (LIKE history_blocks INCLUDING ALL)")
    return Ledger(
        name=name,
        table=name,
        blocks=f"{name}_blocks",
        leaf_sql="sha256('\\x00'::bytea || convert_to(t.body, 'UTF8'))",
    )


async def _append(raw: asyncpg.Connection, ledger: Ledger, n: int) -> None:
    await raw.execute(
        f"INSERT INTO {ledger.table} (body) SELECT 'row ' || g FROM generate_series(1, $1) g", n
    )


@pytest.fixture
async def committed(settings: Settings) -> AsyncIterator[tuple[str, Ledger]]:
    """A scratch log whose rows commit (for several connections at once), dropped after."""
    url = libpq_url(settings.database_url or "")
    setup = await asyncpg.connect(url)
    try:
        ledger = await _scratch(setup)
        yield url, ledger
        await setup.execute(f"DROP TABLE {ledger.table}, {ledger.blocks}")
    finally:
        await setup.close()


async def test_a_backlog_is_sealed_in_blocks_of_at_most_max_rows(conn: AsyncConnection) -> None:
    raw = await _raw(conn)
    ledger = await _scratch(raw)
    await _append(raw, ledger, 25)
    sealer = Sealer(ledger, max_rows=10)
    assert await sealer.round(raw) is None  # notes what is visible
    sealed = []
    while (block := await sealer.round(raw)) is not None:
        sealed.append((block.rows, sealer.backlog))
    print(f"a backlog of 25 rows, at most 10 a block: {sealed}")
    assert sealed == [(10, True), (10, True), (5, False)]
    assert sealer.pending is None
    [verdict] = await verify(raw, [ledger])
    assert (verdict.ok, verdict.blocks, verdict.rows) == (True, 3, 25)
    # Edit a row of the middle block: that block is the first bad one.
    await raw.execute(f"UPDATE {ledger.table} SET body = 'forged' WHERE id = 15")
    [verdict] = await verify(raw, [ledger])
    assert (verdict.ok, verdict.first_bad_block, verdict.rows) == (False, 2, 10)


async def test_the_lag_gauge_is_the_age_of_the_oldest_row_not_sealed(
    conn: AsyncConnection,
) -> None:
    raw = await _raw(conn)
    ledger = await _scratch(raw)
    await raw.execute(
        f"INSERT INTO {ledger.table} (body, at) VALUES ('old', now() - interval '90 seconds')"
    )
    await _append(raw, ledger, 3)
    sealer = Sealer(ledger)

    def lag() -> float | None:
        return REGISTRY.get_sample_value("chain_seal_lag_seconds", {"log": ledger.name})

    await sealer.round(raw)
    assert (lag() or 0) >= 90
    assert await sealer.round(raw) is not None
    await sealer.round(raw)
    assert lag() == 0


async def test_a_backlog_is_sealed_back_to_back_within_the_budget(conn: AsyncConnection) -> None:
    raw = await _raw(conn)
    ledger = await _scratch(raw)
    await _append(raw, ledger, 35)
    sealers = [Sealer(ledger, max_rows=10)]
    assert await seal(raw, sealers, budget=60) is False  # notes; nothing is final yet
    assert await seal(raw, sealers, budget=0) is True  # one full block, more left
    assert await seal(raw, sealers, budget=60) is False  # the rest, block after block
    [verdict] = await verify(raw, [ledger])
    assert (verdict.ok, verdict.blocks, verdict.rows) == (True, 4, 35)


async def test_two_sealers_at_once_never_fork_the_chain(committed: tuple[str, Ledger]) -> None:
    url, ledger = committed
    writer, first, second = [await asyncpg.connect(url) for _ in range(3)]
    try:
        sealers = [(first, Sealer(ledger, max_rows=7)), (second, Sealer(ledger, max_rows=7))]
        written = 0
        for _ in range(40):
            await _append(writer, ledger, 5)
            written += 5
            await asyncio.gather(*(s.round(c) for c, s in sealers))

        async def all_sealed() -> bool:
            await asyncio.gather(*(s.round(c) for c, s in sealers))
            top = await writer.fetchval(f"SELECT max(last_id) FROM {ledger.blocks}")
            return top is not None and top >= written

        await wait_for(all_sealed, what="every row sealed")
        [verdict] = await verify(writer, [ledger])
        numbers = await writer.fetchval(
            f"SELECT array_agg(block_no ORDER BY block_no) FROM {ledger.blocks}"
        )
        print(f"two sealers, 40 rounds each: {verdict.blocks} blocks, {verdict.rows} rows")
        assert numbers == list(range(1, len(numbers) + 1))
        assert (verdict.ok, verdict.rows) == (True, written)
    finally:
        for c in (writer, first, second):
            await c.close()


async def test_a_sealer_that_saw_an_old_tip_loses_to_the_block_already_there(
    committed: tuple[str, Ledger],
) -> None:
    """A sealer's turn is taken in the statement that reads the tip, whose snapshot may
    predate another sealer's commit: its block then collides with the one already there
    (primary key) and the round ends with nothing sealed. Here the old snapshot is made
    to last (repeatable read) so that it happens every time."""
    url, ledger = committed
    writer, a_conn, b_conn = [await asyncpg.connect(url) for _ in range(3)]
    try:
        await _append(writer, ledger, 5)
        a, b = Sealer(ledger), Sealer(ledger)
        await a.round(a_conn)
        await b.round(b_conn)
        old = b_conn.transaction(isolation="repeatable_read")
        await old.start()
        await b_conn.fetchval(f"SELECT count(*) FROM {ledger.blocks}")  # the snapshot: none
        block = await a.round(a_conn)
        assert block is not None and block.block_no == 1
        assert await b.round(b_conn) is None  # took its turn on the old tip; lost at insert
        await old.rollback()
        [verdict] = await verify(writer, [ledger])
        assert (verdict.ok, verdict.blocks, verdict.rows) == (True, 1, 5)
        await _append(writer, ledger, 2)
        await b.round(b_conn)  # notes the new rows past block 1
        block = await wait_for(lambda: b.round(b_conn), what="the next block, by the loser")
        assert (block.block_no, block.rows) == (2, 2)
    finally:
        for c in (writer, a_conn, b_conn):
            await c.close()


def test_seal_seconds_is_read_under_its_former_name_too(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings(_env_file=None).seal_seconds == 1.0  # type: ignore[call-arg]
    monkeypatch.setenv("HISTORY_SEAL_SECONDS", "5")
    assert Settings(_env_file=None).seal_seconds == 5.0  # type: ignore[call-arg]
    monkeypatch.setenv("SEAL_SECONDS", "0.5")
    assert Settings(_env_file=None).seal_seconds == 0.5  # type: ignore[call-arg]
