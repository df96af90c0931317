from __future__ import annotations

import os
import subprocess
import sys

from fastapi import FastAPI

from app.core.settings import Settings
from tests.helpers import assert_invariants


async def test_invariants_hold_on_the_test_database(app: FastAPI) -> None:
    await assert_invariants(app)


def test_check_command_reports_and_exits_zero(settings: Settings) -> None:
    env = {**os.environ, "DATABASE_URL": settings.database_url or ""}
    result = subprocess.run(
        [sys.executable, "-m", "app", "check"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 failed" in result.stdout


async def test_checker_finds_a_redemption_without_history(app: FastAPI) -> None:
    from app.check import run_checks, violations

    async with app.state.db.engine.connect() as conn:
        raw = (await conn.get_raw_connection()).driver_connection
        tx = raw.transaction()
        await tx.start()
        try:
            book = await raw.fetchval("INSERT INTO books (name) VALUES ('t') RETURNING id")
            user = await raw.fetchval(
                "INSERT INTO users (email) VALUES ('chk@example.com') RETURNING id"
            )
            await raw.execute(
                "INSERT INTO codes (book_id, code, status, user_id, redemptions)"
                " VALUES ($1, 'CHK-1', 'redeemed', $2, 1)",
                book,
                user,
            )
            bad = {o.check.name for o in violations(await run_checks(raw))}
        finally:
            await tx.rollback()
    assert "code_redemptions_match_history" in bad
    assert "code_assigned_once" in bad


async def test_checker_finds_a_sold_unit_without_purchase(app: FastAPI) -> None:
    from app.check import run_checks, violations

    async with app.state.db.engine.connect() as conn:
        raw = (await conn.get_raw_connection()).driver_connection
        tx = raw.transaction()
        await tx.start()
        try:
            store = await raw.fetchval(
                "INSERT INTO stores (name, lat, lng) VALUES ('s', 0, 0) RETURNING id"
            )
            product = await raw.fetchval(
                "INSERT INTO products (store_id, name, price_cents) VALUES ($1, 'p', 100)"
                " RETURNING id",
                store,
            )
            promo = await raw.fetchval(
                "INSERT INTO promos (product_id, title, promo_price_cents, quantity, starts_at,"
                " ends_at) VALUES ($1, 't', 50, 2, now(), now() + interval '1 hour') RETURNING id",
                product,
            )
            await raw.execute(
                "UPDATE promo_units SET state = 'sold', reservation_id = gen_random_uuid()"
                " WHERE promo_id = $1",
                promo,
            )
            bad = {o.check.name for o in violations(await run_checks(raw))}
        finally:
            await tx.rollback()
    assert "sold_unit_has_one_purchase" in bad
    assert "promo_not_oversold" in bad


async def _violations_with_codes(app: FastAPI, *codes: tuple[str, str]) -> dict[str, list[str]]:
    """The checks that fail, with the codes they name, once `codes` (code, SET clause for an
    assigned code with its `assigned` history) are in the database; all rolled back."""
    from app.check import run_checks, violations

    async with app.state.db.engine.connect() as conn:
        raw = (await conn.get_raw_connection()).driver_connection
        tx = raw.transaction()
        await tx.start()
        try:
            book = await raw.fetchval("INSERT INTO books (name) VALUES ('t') RETURNING id")
            user = await raw.fetchval(
                "INSERT INTO users (email) VALUES ('lock-chk@example.com') RETURNING id"
            )
            for code, assignments in codes:
                code_id = await raw.fetchval(
                    "INSERT INTO codes (book_id, code, status, user_id, assigned_at)"
                    " VALUES ($1, $2, 'assigned', $3, now()) RETURNING id",
                    book,
                    code,
                    user,
                )
                await raw.execute(
                    "INSERT INTO redemption_history (code_id, book_id, user_id, action, actor_id)"
                    " VALUES ($1, $2, $3, 'assigned', $3)",
                    code_id,
                    book,
                    user,
                )
                await raw.execute(f"UPDATE codes SET {assignments} WHERE id = $1", code_id)
            found = {
                o.check.name: sorted(str(r.get("code")) for r in o.rows)
                for o in violations(await run_checks(raw))
            }
        finally:
            await tx.rollback()
    return found


async def test_checker_flags_a_live_lock_without_history_but_not_a_lapsed_one(
    app: FastAPI,
) -> None:
    live = "status = 'locked', lock_id = gen_random_uuid(), locked_until = now() + interval '1h'"
    lapsed = "status = 'locked', lock_id = gen_random_uuid(), locked_until = now() - interval '1s'"
    bad = await _violations_with_codes(app, ("CHK-LIVE", live), ("CHK-LAPSED", lapsed))
    assert bad.get("live_lock_has_history") == ["CHK-LIVE"]
