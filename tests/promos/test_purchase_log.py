"""The promo purchase log: each purchase appends one row (reservation, promo, unit, buyer,
price, currency, time) in the purchase's own statement, and nothing else does; the worker's
sealer seals it into its own hash chain like the history; `GET /audit/verify` and
`python -m app check` name the first bad block when a purchase-log row is edited, deleted or
inserted behind the service's back (the append-only trigger disabled, as a superuser could)
or a block is rewritten."""

from __future__ import annotations

from typing import Any

import asyncpg
import httpx
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from app.check import run_checks, violations
from app.core.chain import Block, Sealer
from app.core.security import Role
from app.promos.purchase_log import PURCHASES
from tests.conftest import MakeUser
from tests.helpers import ApiUser, assert_problem, wait_for
from tests.promos.support import create_promo, place, placed_users, random_point, reserve

API = "/api/v1"
TRIGGERS = {
    "purchase_log": "trg_purchase_log_append_only",
    "purchase_blocks": "trg_purchase_blocks_append_only",
}


async def _raw(conn: AsyncConnection) -> asyncpg.Connection:
    return (await conn.get_raw_connection()).driver_connection  # type: ignore[return-value]


async def _buy(client: httpx.AsyncClient, buyer: ApiUser, promo_id: str) -> str:
    """Reserve and purchase one unit; the reservation's id."""
    resp = await reserve(client, buyer, promo_id)
    assert resp.status_code == 201, resp.text
    held = resp.json()["id"]
    resp = await client.post(f"{API}/reservations/{held}/purchase", headers=buyer.headers)
    assert resp.status_code == 200 and resp.json()["status"] == "purchased", resp.text
    return str(held)


async def _seal(raw: asyncpg.Connection, sealer: Sealer) -> Block:
    """Rounds until a block is sealed: the first notes what is visible, a later one seals
    it once the transactions then running (on the whole server) have ended."""
    await sealer.round(raw)
    block: Block = await wait_for(lambda: sealer.round(raw), what="a sealed block")
    return block


async def _verify_api(client: httpx.AsyncClient, admin: ApiUser) -> dict[str, Any]:
    resp = await client.get(f"{API}/audit/verify", headers=admin.headers)
    assert resp.status_code == 200, resp.text
    out: dict[str, Any] = resp.json()
    return out


async def test_a_purchase_appends_its_log_row_in_its_own_single_statement(
    app: FastAPI,
    live_client: httpx.AsyncClient,
    make_live_user: MakeUser,
    pg: asyncpg.Connection,
    statements: list[str],
) -> None:
    admin = await make_live_user(Role.admin)
    lat, lng = random_point()
    [buyer] = await placed_users(app, 1, lat, lng)
    promo = await create_promo(live_client, admin, at=(lat, lng), quantity=3, promo_price_cents=250)
    resp = await reserve(live_client, buyer, promo["id"])
    assert resp.status_code == 201, resp.text
    held = resp.json()["id"]

    statements.clear()
    resp = await live_client.post(f"{API}/reservations/{held}/purchase", headers=buyer.headers)
    assert resp.status_code == 200, resp.text
    # The round trips of a purchase as before the log (its transaction and one statement):
    # the purchase statement itself writes the row.
    assert statements[0] == "BEGIN;" and statements[-1] == "COMMIT;", statements
    [purchase] = statements[1:-1]
    assert "INSERT INTO purchase_log" in purchase and "UPDATE promo_units" in purchase

    again = await live_client.post(f"{API}/reservations/{held}/purchase", headers=buyer.headers)
    assert again.status_code == 200 and again.json()["status"] == "purchased", again.text
    rows = await pg.fetch(
        "SELECT l.*, r.unit_id AS reserved_unit, r.updated_at AS purchased_at"
        " FROM purchase_log l JOIN reservations r ON r.id = l.reservation_id"
        " WHERE l.reservation_id = $1",
        held,
    )
    assert len(rows) == 1, rows  # a repeated purchase logs nothing more
    [row] = rows
    assert str(row["promo_id"]) == promo["id"] and row["user_id"] == buyer.id
    assert row["unit_id"] == row["reserved_unit"]
    assert (row["price_cents"], row["currency"]) == (250, "EUR")
    assert row["at"] == row["purchased_at"]  # the purchase's own transaction time


async def test_a_purchase_that_fails_logs_nothing(
    client: httpx.AsyncClient, admin: ApiUser, user: ApiUser, conn: AsyncConnection
) -> None:
    lat, lng = random_point()
    await place(client, user, lat, lng)
    cancelled = await create_promo(client, admin, at=(lat, lng))
    lapsed = await create_promo(client, admin, at=(lat, lng))
    tried = []
    for promo, slug in ((cancelled, "promo-not-running"), (lapsed, "reservation-expired")):
        held = (await reserve(client, user, promo["id"])).json()["id"]
        tried.append(held)
        if promo is cancelled:
            # The unit is sold inside the statement, then the promo check fails: rolled back.
            await client.post(f"{API}/promos/{promo['id']}/cancel", headers=admin.headers)
        else:
            await conn.execute(
                text("UPDATE reservations SET expires_at = now() - interval '1 s' WHERE id = :id"),
                {"id": held},
            )
        resp = await client.post(f"{API}/reservations/{held}/purchase", headers=user.headers)
        assert_problem(resp, 409, slug)
    logged = (
        await conn.execute(
            text(
                "SELECT count(*) FROM purchase_log WHERE reservation_id = ANY(CAST(:ids AS uuid[]))"
            ),
            {"ids": tried},
        )
    ).scalar_one()
    assert logged == 0


async def test_sealed_purchase_log_verifies_and_every_tampering_is_caught(
    client: httpx.AsyncClient,
    admin: ApiUser,
    user: ApiUser,
    make_user: MakeUser,
    conn: AsyncConnection,
) -> None:
    raw = await _raw(conn)
    sealer = Sealer(PURCHASES)
    lat, lng = random_point()
    await place(client, user, lat, lng)
    promo = await create_promo(client, admin, at=(lat, lng), quantity=10, max_per_user=10)
    for _ in range(3):
        await _buy(client, user, promo["id"])
    first = await _seal(raw, sealer)
    # A gap in the ids inside the next block: a place to insert a row behind its back.
    gap = await raw.fetchval("SELECT nextval(pg_get_serial_sequence('purchase_log', 'id'))")
    for _ in range(3):
        await _buy(client, user, promo["id"])
    second = await _seal(raw, sealer)
    assert second.block_no == first.block_no + 1 and second.rows == 3
    clean = await _verify_api(client, admin)
    assert clean["ok"] is True and clean["first_bad_block"] is None
    [purchases] = [v for v in clean["logs"] if v["log"] == "purchases"]
    assert purchases["ok"] is True and purchases["blocks"] >= 2 and purchases["rows"] >= 6

    target = await raw.fetchrow(
        "SELECT * FROM purchase_log WHERE id <= $1 ORDER BY id DESC LIMIT 1", first.last_id
    )
    assert target is not None and target["user_id"] == user.id
    other = await make_user(Role.user)
    tamperings = {
        "edit a purchase's price": (
            f"UPDATE purchase_log SET price_cents = 1 WHERE id = {target['id']}",
            first.block_no,
        ),
        "give a purchase to another buyer": (
            f"UPDATE purchase_log SET user_id = '{other.id}' WHERE id = {target['id']}",
            first.block_no,
        ),
        "move a purchase's time": (
            f"UPDATE purchase_log SET at = at - interval '1 day' WHERE id = {target['id']}",
            first.block_no,
        ),
        "delete a purchase": (
            f"DELETE FROM purchase_log WHERE id = {target['id']}",
            first.block_no,
        ),
        "insert a purchase into a sealed range": (
            "INSERT INTO purchase_log (id, reservation_id, promo_id, unit_id, user_id,"
            " price_cents, currency) OVERRIDING SYSTEM VALUE VALUES"
            f" ({gap}, gen_random_uuid(), '{target['promo_id']}', {target['unit_id']},"
            f" '{other.id}', 0, 'EUR')",
            second.block_no,
        ),
        "rewrite a block's root to match": (
            "UPDATE purchase_blocks SET merkle_root = sha256(merkle_root)"
            f" WHERE block_no = {second.block_no}",
            second.block_no,
        ),
    }
    for what, (sql, expected_block) in tamperings.items():
        undo = raw.transaction()  # a savepoint: each attempt is undone before the next
        await undo.start()
        try:
            for table, trigger in TRIGGERS.items():
                await raw.execute(f"ALTER TABLE {table} DISABLE TRIGGER {trigger}")
            await raw.execute(sql)
            verdict = await _verify_api(client, admin)
            failed = [o.check.name for o in violations(await run_checks(raw))]
            print(
                f"tried: {what:38} -> caught in {verdict['first_bad_log']} at block"
                f" {verdict['first_bad_block']}; checks failing: {', '.join(failed)}"
            )
            assert verdict["ok"] is False and verdict["first_bad_log"] == "purchases"
            assert verdict["first_bad_block"] == expected_block
            assert [v["ok"] for v in verdict["logs"]] == [True, False]
            assert "purchases_chain_intact" in failed
        finally:
            await undo.rollback()
    assert (await _verify_api(client, admin))["ok"] is True


async def test_the_append_only_triggers_refuse_changes(conn: AsyncConnection) -> None:
    raw = await _raw(conn)
    for sql in (
        "UPDATE purchase_log SET price_cents = 0",
        "DELETE FROM purchase_log",
        "TRUNCATE purchase_log",
        "UPDATE purchase_blocks SET rows = 0",
        "DELETE FROM purchase_blocks",
        "TRUNCATE purchase_blocks",
    ):
        undo = raw.transaction()
        await undo.start()
        try:
            # A row to refuse, so the row triggers fire too.
            await raw.execute(
                "INSERT INTO purchase_log (reservation_id, promo_id, unit_id, user_id,"
                " price_cents, currency) VALUES (gen_random_uuid(), gen_random_uuid(), 1,"
                " gen_random_uuid(), 1, 'EUR')"
            )
            await raw.execute(
                "INSERT INTO purchase_blocks (block_no, last_id, rows, merkle_root, prev_hash,"
                " block_hash) VALUES (9000000000, 9000000000, 0, '', '', '')"
            )
            try:
                await raw.execute(sql)
            except asyncpg.RestrictViolationError as exc:
                assert "append-only" in str(exc)
            else:
                raise AssertionError(f"{sql} was not refused")
        finally:
            await undo.rollback()
