"""Erasure and export of a person's data: `GET /me/export` answers everything stored about
the caller; `DELETE /me` and `DELETE /users/{id}` release live locks and reservations, delete
the inbox, memberships and sessions, wipe the profile, and keep the history and the purchase
log under the pseudonymous id so counts and limits still add up and both sealed chains still
verify; a second erasure is 404."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from app.audit.ledgers import LEDGERS
from app.core.chain import Sealer
from app.core.security import Role
from tests.books.flows import book_with_codes
from tests.conftest import MakeUser
from tests.helpers import ApiUser, assert_problem, wait_for
from tests.promos.support import create_promo, place, random_point, reserve

API = "/api/v1"
PASSWORD = "correct horse battery"


async def _person(client: httpx.AsyncClient) -> tuple[ApiUser, str, str]:
    """A registered person with a password login: (them, email, refresh token)."""
    email = f"p-{uuid.uuid4().hex[:12]}@example.com"
    resp = await client.post(f"{API}/auth/register", json={"email": email, "password": PASSWORD})
    assert resp.status_code == 201, resp.text
    user_id = uuid.UUID(resp.json()["id"])
    resp = await client.post(f"{API}/auth/token", data={"username": email, "password": PASSWORD})
    assert resp.status_code == 200, resp.text
    tokens = resp.json()
    return (
        ApiUser(user_id, email, Role.user, tokens["access_token"]),
        email,
        tokens["refresh_token"],
    )


async def _scalar(conn: AsyncConnection, sql: str, **params: Any) -> Any:
    return (await conn.execute(text(sql), params)).scalar_one()


async def _a_full_life(
    client: httpx.AsyncClient, admin: ApiUser, person: ApiUser, conn: AsyncConnection
) -> dict[str, Any]:
    """Codes (one redeemed, one locked now), a held reservation, a notification, a
    segment membership and a profile."""
    book, codes = await book_with_codes(client, admin, n=2, max_codes_per_user=None)
    for code in codes:
        resp = await client.post(f"{API}/codes/{code}/assign", headers=person.headers)
        assert resp.status_code == 201, resp.text
    resp = await client.post(f"{API}/codes/{codes[0]}/redeem", headers=person.headers)
    assert resp.status_code == 200, resp.text
    resp = await client.post(f"{API}/codes/{codes[1]}/lock", headers=person.headers)
    assert resp.status_code == 200, resp.text
    lat, lng = random_point()
    promo = await create_promo(client, admin, at=(lat, lng))
    await place(client, person, lat, lng)
    resp = await client.put(
        f"{API}/me/profile",
        json={"tags": ["vip"], "birth_date": "1990-05-17"},
        headers=person.headers,
    )
    assert resp.status_code == 200, resp.text
    resp = await reserve(client, person, promo["id"])
    assert resp.status_code == 201, resp.text
    await conn.execute(
        text(
            "INSERT INTO notifications (id, user_id, promo_id, day)"
            " VALUES ((SELECT coalesce(max(id), 0) + 1 FROM notifications), :u, :p, current_date)"
        ),
        {"u": person.id, "p": promo["id"]},
    )
    resp = await client.post(
        f"{API}/segments", json={"name": "vips", "kind": "static"}, headers=admin.headers
    )
    segment = resp.json()["id"]
    resp = await client.post(
        f"{API}/segments/{segment}/members",
        json={"user_ids": [str(person.id)]},
        headers=admin.headers,
    )
    assert resp.json()["added"] == 1
    return {"book": book, "codes": codes, "promo": promo, "segment": segment}


async def test_export_holds_everything_stored_about_the_caller(
    client: httpx.AsyncClient, admin: ApiUser, conn: AsyncConnection
) -> None:
    person, email, _ = await _person(client)
    life = await _a_full_life(client, admin, person, conn)
    resp = await client.get(f"{API}/me/export", headers=person.headers)
    assert resp.status_code == 200, resp.text
    data = resp.json()
    assert data["profile"]["email"] == email and data["profile"]["tags"] == ["vip"]
    assert data["profile"]["birth_date"] == "1990-05-17" and data["profile"]["lat"] is not None
    assert sorted(c["code"] for c in data["codes"]) == sorted(life["codes"])
    assert [h["action"] for h in data["history"]] == ["assigned", "assigned", "redeemed", "locked"]
    assert [r["promo_id"] for r in data["reservations"]] == [life["promo"]["id"]]
    assert len(data["notifications"]) == 1
    assert [s["id"] for s in data["segments"]] == [life["segment"]]
    assert len(data["sessions"]) == 1
    assert "password" not in resp.text and "argon2" not in resp.text
    assert "secret" not in resp.text


async def test_erasing_me_releases_deletes_wipes_and_keeps_the_pseudonymous_history(
    client: httpx.AsyncClient, admin: ApiUser, conn: AsyncConnection
) -> None:
    person, email, refresh_token = await _person(client)
    life = await _a_full_life(client, admin, person, conn)
    history_before = await _scalar(
        conn, "SELECT count(*) FROM redemption_history WHERE user_id = :u", u=person.id
    )

    resp = await client.delete(f"{API}/me", headers=person.headers)
    assert resp.status_code == 204, resp.text
    assert_problem(await client.delete(f"{API}/me", headers=person.headers), 404, "not-found")
    assert_problem(await client.get(f"{API}/me/export", headers=person.headers), 404, "not-found")

    row = (
        await conn.execute(
            text(
                "SELECT email, password_hash, lat, lng, birth_date, tags, erased_at"
                " FROM users WHERE id = :u"
            ),
            {"u": person.id},
        )
    ).one()
    assert row.email == f"erased-{person.id}@erased.invalid"
    assert row.password_hash is None and row.lat is None and row.lng is None
    assert row.birth_date is None and row.tags == [] and row.erased_at is not None
    # The live lock is released (and the release is history); the codes stay counted.
    codes = {
        r.code: r
        for r in (
            await conn.execute(
                text("SELECT code, status, user_id, redemptions FROM codes WHERE book_id = :b"),
                {"b": life["book"]["id"]},
            )
        ).all()
    }
    assert codes[life["codes"][1]].status == "assigned"
    assert codes[life["codes"][0]].status == "redeemed"
    assert {c.user_id for c in codes.values()} == {person.id}
    history_after = await _scalar(
        conn, "SELECT count(*) FROM redemption_history WHERE user_id = :u", u=person.id
    )
    assert history_after == history_before + 1
    last = await _scalar(
        conn,
        "SELECT action FROM redemption_history WHERE user_id = :u ORDER BY id DESC LIMIT 1",
        u=person.id,
    )
    assert last == "unlocked"
    # The held reservation is released and its unit is free again.
    reservation = (
        await conn.execute(
            text(
                "SELECT r.status, u.state FROM reservations r JOIN promo_units u"
                " ON u.id = r.unit_id WHERE r.user_id = :u"
            ),
            {"u": person.id},
        )
    ).one()
    assert reservation.status == "cancelled" and reservation.state == "free"
    for table, where in [
        ("notifications", "user_id = :u"),
        ("segment_members", "user_id = :u"),
        ("refresh_tokens", "user_id = :u"),
        ("idempotency_keys", "user_id = :u"),
    ]:
        assert await _scalar(conn, f"SELECT count(*) FROM {table} WHERE {where}", u=person.id) == 0
    # No way back in: the password and the refresh token are gone; the email is free again.
    resp = await client.post(f"{API}/auth/token", data={"username": email, "password": PASSWORD})
    assert_problem(resp, 401, "unauthenticated")
    resp = await client.post(f"{API}/auth/refresh", json={"refresh_token": refresh_token})
    assert_problem(resp, 401, "unauthenticated")
    resp = await client.post(f"{API}/auth/register", json={"email": email, "password": PASSWORD})
    assert resp.status_code == 201, resp.text
    assert resp.json()["id"] != str(person.id)


async def test_an_admin_erases_a_user_and_it_is_audited(
    client: httpx.AsyncClient, admin: ApiUser, make_user: MakeUser, conn: AsyncConnection
) -> None:
    person, _, _ = await _person(client)
    other = await make_user(Role.user)
    assert_problem(
        await client.delete(f"{API}/users/{person.id}", headers=other.headers), 403, "forbidden"
    )
    resp = await client.delete(f"{API}/users/{person.id}", headers=admin.headers)
    assert resp.status_code == 204, resp.text
    resp = await client.delete(f"{API}/users/{person.id}", headers=admin.headers)
    assert_problem(resp, 404, "not-found")
    assert_problem(
        await client.get(f"{API}/users/{person.id}", headers=admin.headers), 404, "not-found"
    )
    listed = (await client.get(f"{API}/users?limit=500", headers=admin.headers)).json()["items"]
    assert str(person.id) not in {u["id"] for u in listed}
    resp = await client.get(
        f"{API}/audit", params={"target": f"user:{person.id}"}, headers=admin.headers
    )
    (entry,) = resp.json()["items"]
    assert entry["action"] == "user.erase" and entry["actor_id"] == str(admin.id)
    assert entry["after"]["sessions"] == 1
    assert_problem(
        await client.delete(f"{API}/users/{uuid.uuid4()}", headers=admin.headers),
        404,
        "not-found",
    )


async def _buy(client: httpx.AsyncClient, admin: ApiUser, buyer: ApiUser) -> str:
    """`buyer` buys one unit of a new promo near them; the reservation's id."""
    lat, lng = random_point()
    promo = await create_promo(client, admin, at=(lat, lng))
    await place(client, buyer, lat, lng)
    held = (await reserve(client, buyer, promo["id"])).json()["id"]
    resp = await client.post(f"{API}/reservations/{held}/purchase", headers=buyer.headers)
    assert resp.status_code == 200, resp.text
    return str(held)


async def _seal_everything(conn: AsyncConnection) -> None:
    """Seal both logs up to everything visible now."""
    raw = (await conn.get_raw_connection()).driver_connection
    for sealer in [Sealer(ledger) for ledger in LEDGERS]:

        async def settled(sealer: Sealer = sealer) -> bool:
            await sealer.round(raw)
            return sealer.pending is None

        await wait_for(settled, what=f"the {sealer.ledger.name} log sealed")


async def _verify(client: httpx.AsyncClient, admin: ApiUser) -> dict[str, dict[str, Any]]:
    resp = await client.get(f"{API}/audit/verify", headers=admin.headers)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["ok"] is True, body
    return {v["log"]: v for v in body["logs"]}


async def test_erasure_keeps_the_sealed_history_and_purchase_log_verifiable(
    client: httpx.AsyncClient, admin: ApiUser, make_user: MakeUser, conn: AsyncConnection
) -> None:
    person, _, _ = await _person(client)
    await _a_full_life(client, admin, person, conn)  # a live lock: erasure writes history
    bought = await _buy(client, admin, person)
    other = await make_user(Role.user)
    other_bought = await _buy(client, admin, other)
    resp = await client.get(f"{API}/me/export", headers=person.headers)
    assert [p["reservation_id"] for p in resp.json()["purchases"]] == [bought]
    await _seal_everything(conn)
    before = await _verify(client, admin)

    resp = await client.delete(f"{API}/me", headers=person.headers)
    assert resp.status_code == 204, resp.text
    resp = await client.delete(f"{API}/users/{other.id}", headers=admin.headers)
    assert resp.status_code == 204, resp.text
    await _seal_everything(conn)
    after = await _verify(client, admin)
    print(f"sealed before erasure: {before}; after: {after}")
    # The release of the live lock is one more history row, sealed like any other; the
    # purchases stay as they were sealed, under the ids that now name nobody.
    assert after["history"]["rows"] == before["history"]["rows"] + 1
    assert after["purchases"]["rows"] == before["purchases"]["rows"]
    kept = await _scalar(
        conn,
        "SELECT array_agg(reservation_id::text ORDER BY id) FROM purchase_log"
        " WHERE user_id IN (:a, :b)",
        a=person.id,
        b=other.id,
    )
    assert kept == [bought, other_bought]
