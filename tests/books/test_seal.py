"""Tamper-evident history: the sealer appends blocks (Merkle root of the rows since the last
block, chained by hash); `GET /audit/verify` and `python -m app check` recompute the chain and
name the first bad block when a history row is edited, deleted or inserted behind the
service's back (the append-only trigger disabled, as a superuser could), or a block is
rewritten; rows of transactions still running are sealed only once those end."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg
import httpx
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncConnection

from app.books.seal import HISTORY
from app.check import run_checks, violations
from app.core.chain import Sealer, merkle_root, verify
from app.core.db import libpq_url
from app.core.security import Role
from app.core.settings import Settings
from app.notifications.worker import Worker, WorkerConfig
from tests.books.flows import book_with_codes
from tests.books.helpers import API
from tests.conftest import MakeUser
from tests.helpers import ApiUser, wait_for

TRIGGER = "trg_redemption_history_append_only"


async def _raw(conn: AsyncConnection) -> asyncpg.Connection:
    return (await conn.get_raw_connection()).driver_connection  # type: ignore[return-value]


async def _history(client: httpx.AsyncClient, admin: ApiUser, user: ApiUser, n: int) -> None:
    """`n` codes assigned, locked and redeemed: 3n history rows."""
    _, codes = await book_with_codes(client, admin, n=n, max_codes_per_user=None)
    for code in codes:
        body: dict[str, Any] = {}
        for step in ("assign", "lock", "redeem"):
            resp = await client.post(f"{API}/codes/{code}/{step}", json=body, headers=user.headers)
            assert resp.status_code in (200, 201), resp.text
            body = {"lock_id": resp.json()["lock_id"]} if step == "lock" else {}


async def _seal(raw: asyncpg.Connection, sealer: Sealer) -> Any:
    """Rounds until a block is sealed: the first notes what is visible, a later one seals
    it once the transactions then running (on the whole server) have ended."""
    await sealer.round(raw)
    return await wait_for(lambda: sealer.round(raw), what="a sealed block")


async def _verify_api(client: httpx.AsyncClient, admin: ApiUser) -> dict[str, Any]:
    resp = await client.get(f"{API}/audit/verify", headers=admin.headers)
    assert resp.status_code == 200, resp.text
    out: dict[str, Any] = resp.json()
    return out


async def _settled(sealer: Sealer, conn: asyncpg.Connection) -> bool:
    """A round ran and left nothing noted: everything visible is sealed."""
    await sealer.round(conn)
    return sealer.pending is None


def test_the_merkle_root_depends_on_every_leaf_and_their_order() -> None:
    leaves = [bytes([i]) * 32 for i in range(5)]
    root = merkle_root(leaves)
    assert merkle_root(leaves[::-1]) != root
    assert merkle_root(leaves[:4]) != root
    for i in range(5):
        changed = [*leaves]
        changed[i] = bytes([9]) * 32
        assert merkle_root(changed) != root
    assert merkle_root([*leaves, leaves[-1]]) != root  # no duplicated-last-leaf collision


async def test_sealed_history_verifies_and_every_tampering_is_caught(
    client: httpx.AsyncClient, admin: ApiUser, user: ApiUser, conn: AsyncConnection
) -> None:
    raw = await _raw(conn)
    sealer = Sealer(HISTORY)
    await _history(client, admin, user, 3)
    first = await _seal(raw, sealer)
    # A gap in the ids inside the next block: a place to insert a row behind its back.
    gap = await raw.fetchval("SELECT nextval(pg_get_serial_sequence('redemption_history', 'id'))")
    await _history(client, admin, user, 3)
    second = await _seal(raw, sealer)
    assert second.block_no == first.block_no + 1 and second.rows == 9
    clean = await _verify_api(client, admin)
    assert clean["ok"] is True and clean["first_bad_block"] is None
    assert clean["blocks"] >= 2 and clean["rows"] >= 18

    target = await raw.fetchrow(
        "SELECT id, code_id, book_id, user_id FROM redemption_history"
        " WHERE id <= $1 ORDER BY id DESC LIMIT 1",
        first.last_id,
    )
    tamperings = {
        "edit a redeemed row's details": (
            f'UPDATE redemption_history SET details = \'{{"order_ref": "forged"}}\''
            f" WHERE id = {target['id']}",
            first.block_no,
        ),
        "delete a row": (
            f"DELETE FROM redemption_history WHERE id = {target['id']}",
            first.block_no,
        ),
        "insert a row into a sealed range": (
            "INSERT INTO redemption_history (id, code_id, book_id, user_id, action, actor_id)"
            f" OVERRIDING SYSTEM VALUE VALUES ({gap}, {target['code_id']},"
            f" '{target['book_id']}', '{target['user_id']}', 'redeemed', '{target['user_id']}')",
            second.block_no,
        ),
        "move a row's time": (
            f"UPDATE redemption_history SET at = at - interval '1 day' WHERE id = {target['id']}",
            first.block_no,
        ),
        "rewrite a block's root to match": (
            "UPDATE history_blocks SET merkle_root = sha256(merkle_root)"
            f" WHERE block_no = {second.block_no}",
            second.block_no,
        ),
    }
    for what, (sql, expected_block) in tamperings.items():
        undo = raw.transaction()  # a savepoint: each attempt is undone before the next
        await undo.start()
        try:
            await raw.execute(f"ALTER TABLE redemption_history DISABLE TRIGGER {TRIGGER}")
            await raw.execute(
                "ALTER TABLE history_blocks DISABLE TRIGGER trg_history_blocks_append_only"
            )
            await raw.execute(sql)
            verdict = await _verify_api(client, admin)
            failed = [o.check.name for o in violations(await run_checks(raw))]
            print(f"tried: {what:34} -> caught at block {verdict['first_bad_block']}")
            assert verdict["ok"] is False and verdict["first_bad_block"] == expected_block
            assert verdict["first_bad_log"] == "history"
            assert [v["ok"] for v in verdict["logs"]] == [False, True]
            assert "history_chain_intact" in failed
        finally:
            await undo.rollback()
    assert (await _verify_api(client, admin))["ok"] is True


async def test_rows_of_a_transaction_still_running_are_sealed_once_it_ends(
    app: FastAPI, settings: Settings, live_client: httpx.AsyncClient, make_live_user: MakeUser
) -> None:
    admin = await make_live_user(Role.admin)
    holder = await make_live_user(Role.user)
    _, codes = await book_with_codes(live_client, admin, n=2, max_codes_per_user=None)
    for code in codes:
        resp = await live_client.post(f"{API}/codes/{code}/assign", headers=holder.headers)
        assert resp.status_code == 201, resp.text
    url = libpq_url(settings.database_url or "")
    slow, fast, sealing = [await asyncpg.connect(url) for _ in range(3)]
    try:
        code_row = await fast.fetchrow(
            "SELECT id, book_id, user_id FROM codes WHERE code = $1", codes[0]
        )
        insert = (
            "INSERT INTO redemption_history (code_id, book_id, user_id, action, actor_id, details)"
            " VALUES ($1, $2, $3, 'locked', $3, $4) RETURNING id"
        )
        sealer = Sealer(HISTORY)
        await sealer.round(sealing)  # seal whatever came before
        await wait_for(lambda: _settled(sealer, sealing), what="earlier rows sealed")
        slow_tx = slow.transaction()
        await slow_tx.start()
        slow_id = await slow.fetchval(insert, *code_row, '{"who": "slow"}')
        fast_id = await fast.fetchval(insert, *code_row, '{"who": "fast"}')
        assert fast_id > slow_id  # committed first, with the larger id
        assert await sealer.round(sealing) is None  # notes fast_id and the running slow one
        assert await sealer.round(sealing) is None  # slow is still running: nothing sealed
        await slow_tx.commit()
        block = await wait_for(lambda: sealer.round(sealing), what="the block after the commit")
        assert block.last_id >= fast_id
        covered = await sealing.fetchval(
            "SELECT count(*) FROM redemption_history WHERE id IN ($1, $2) AND id <= $3",
            slow_id,
            fast_id,
            block.last_id,
        )
        assert covered == 2
        [verdict] = await verify(sealing, [HISTORY])
        print(f"sealed block {block.block_no}: {block.rows} rows, chain ok={verdict.ok}")
        assert verdict.ok
    finally:
        for c in (slow, fast, sealing):
            await c.close()


async def test_the_worker_seals_new_history_and_reports_its_lag(
    app: FastAPI, settings: Settings, live_client: httpx.AsyncClient, make_live_user: MakeUser
) -> None:
    admin = await make_live_user(Role.admin)
    holder = await make_live_user(Role.user)
    _, codes = await book_with_codes(live_client, admin, n=1)
    resp = await live_client.post(f"{API}/codes/{codes[0]}/assign", headers=holder.headers)
    assert resp.status_code == 201, resp.text
    url = libpq_url(settings.database_url or "")
    pg = await asyncpg.connect(url)
    try:
        written = await pg.fetchval(
            "SELECT max(h.id) FROM redemption_history h JOIN codes c"
            " ON c.book_id = h.book_id AND c.id = h.code_id WHERE c.code = $1",
            codes[0],
        )
        config = WorkerConfig(
            database_url=url,
            direct_url=url,
            poll_seconds=0.2,
            seal_seconds=0.2,
            statement_cache_size=settings.statement_cache_size,
        )
        worker = Worker(config)
        started = time.monotonic()
        running = asyncio.create_task(worker.run())

        async def sealed() -> bool:
            top = await pg.fetchval("SELECT max(last_id) FROM history_blocks")
            return top is not None and top >= written

        try:
            await wait_for(sealed, timeout=30, what="the worker sealed the new row")
        finally:
            worker.stop()
            await asyncio.wait_for(running, timeout=30)
        print(f"sealed {time.monotonic() - started:.2f} s after the worker started")
        assert all(v.ok for v in await verify(pg, [HISTORY]))
    finally:
        await pg.close()
