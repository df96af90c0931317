"""Admin accountability: every admin change is one audit entry (actor, time, request id,
target, before/after), written with the change; `GET /audit` reads them newest first in
keyset pages, filtered by target, actor and time; the table is append-only."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from app.core.security import Role
from tests.books.flows import book_with_codes
from tests.books.helpers import API, make_book
from tests.conftest import MakeUser
from tests.helpers import ApiUser, assert_problem
from tests.promos.support import create_promo


async def _audit(client: httpx.AsyncClient, admin: ApiUser, **query: Any) -> list[dict[str, Any]]:
    resp = await client.get(f"{API}/audit", params=query, headers=admin.headers)
    assert resp.status_code == 200, resp.text
    items: list[dict[str, Any]] = resp.json()["items"]
    return items


async def test_a_book_patch_is_recorded_with_actor_request_and_diff(
    client: httpx.AsyncClient, admin: ApiUser
) -> None:
    book = await make_book(client, admin)
    resp = await client.patch(
        f"{API}/books/{book['id']}",
        json={"status": "paused", "name": book["name"]},
        headers={**admin.headers, "X-Request-ID": "req-pause-1"},
    )
    assert resp.status_code == 200, resp.text
    entries = await _audit(client, admin, target=f"book:{book['id']}")
    assert [e["action"] for e in entries] == ["book.update", "book.create"]
    update, create = entries
    assert update["actor_id"] == str(admin.id)
    assert update["request_id"] == "req-pause-1"
    assert update["target_type"] == "book" and update["target_id"] == book["id"]
    assert update["before"] == {"status": "active"}  # the name did not change: not listed
    assert update["after"] == {"status": "paused"}
    assert create["before"] is None and create["after"]["name"] == book["name"]
    assert update["id"] > create["id"] and update["at"] >= create["at"]
    # By bare id too.
    assert [e["id"] for e in await _audit(client, admin, target=book["id"])] == [
        update["id"],
        create["id"],
    ]


async def test_every_admin_change_is_recorded(
    client: httpx.AsyncClient, make_user: MakeUser, conn: AsyncConnection
) -> None:
    admin = await make_user(Role.admin)  # a fresh actor: its entries are this test's
    user = await make_user(Role.user)
    book, _ = await book_with_codes(client, admin, n=3)
    calls: list[tuple[str, str, dict[str, Any]]] = [
        ("post", f"/books/{book['id']}/codes/generate", {"json": {"count": 2, "length": 8}}),
        ("post", f"/books/{book['id']}/distribute", {"json": {"user_ids": [str(user.id)]}}),
        ("post", "/segments", {"json": {"name": "vips", "kind": "static"}}),
        ("patch", f"/users/{user.id}", {"json": {"role": "user"}}),
    ]
    for method, path, kwargs in calls:
        resp = await client.request(method, f"{API}{path}", headers=admin.headers, **kwargs)
        assert resp.status_code in (200, 201), (path, resp.text)
    segment = (await _audit(client, admin, actor=str(admin.id)))[1]["target_id"]
    more: list[tuple[str, str, dict[str, Any]]] = [
        ("patch", f"/segments/{segment}", {"json": {"name": "very important"}}),
        ("post", f"/segments/{segment}/members", {"json": {"user_ids": [str(user.id)]}}),
        ("delete", f"/segments/{segment}/members/{user.id}", {}),
        ("delete", f"/segments/{segment}", {}),
    ]
    for method, path, kwargs in more:
        resp = await client.request(method, f"{API}{path}", headers=admin.headers, **kwargs)
        assert resp.status_code in (200, 204), (path, resp.text)
    promo = await create_promo(client, admin)
    for method, path, body in [
        ("patch", f"/promos/{promo['id']}", {"title": "Flash deal!"}),
        ("post", f"/promos/{promo['id']}/cancel", None),
    ]:
        resp = await client.request(method, f"{API}{path}", json=body, headers=admin.headers)
        assert resp.status_code == 200, resp.text
    redeemer = await make_user(Role.user)
    resp = await client.get(
        f"{API}/books/{book['id']}/codes?status=unassigned", headers=admin.headers
    )
    free = resp.json()["items"][0]["code"]  # distribute handed one of them out
    resp = await client.post(f"{API}/codes/{free}/assign", headers=redeemer.headers)
    assert resp.status_code == 201, resp.text
    resp = await client.post(f"{API}/codes/{free}/redeem", headers=redeemer.headers)
    redemption_id = resp.json()["redemption_id"]
    resp = await client.post(
        f"{API}/codes/{free}/rollback",
        json={"redemption_id": redemption_id, "reason": "order cancelled"},
        headers=admin.headers,
    )
    assert resp.status_code == 200, resp.text
    await conn.execute(
        text(
            "INSERT INTO lockouts (key, window_started_at, failures, locked_until)"
            " VALUES ('ip:192.0.2.44', now(), 11, now() + interval '5 minutes')"
        )
    )
    resp = await client.delete(f"{API}/lockouts/ip:192.0.2.44", headers=admin.headers)
    assert resp.status_code == 204, resp.text

    entries = await _audit(client, admin, actor=str(admin.id), limit=100)
    actions = [e["action"] for e in reversed(entries)]
    print("recorded:", ", ".join(actions))
    assert actions == [
        "book.create",
        "book.codes.upload",
        "book.codes.generate",
        "book.distribute",
        "segment.create",
        "user.role",
        "segment.update",
        "segment.members.add",
        "segment.members.remove",
        "segment.delete",
        "store.create",
        "product.create",
        "promo.create",
        "promo.update",
        "promo.cancel",
        "code.rollback",
        "lockout.clear",
    ]
    by_action = {e["action"]: e for e in entries}
    assert by_action["book.codes.upload"]["after"]["inserted"] == 3
    assert by_action["book.codes.generate"]["after"]["inserted"] == 2
    assert by_action["promo.update"]["before"] == {"title": "Flash deal"}
    assert by_action["promo.cancel"]["after"]["status"] == "cancelled"
    assert by_action["user.role"]["before"] is None or by_action["user.role"]["before"] == {}
    assert by_action["segment.delete"]["before"]["name"] == "very important"
    assert by_action["code.rollback"]["after"]["reason"] == "order cancelled"
    assert by_action["lockout.clear"]["target_id"] == "ip:192.0.2.44"
    assert by_action["lockout.clear"]["before"]["failures"] == 11
    assert all(e["request_id"] for e in entries)


async def test_an_upload_as_a_job_and_its_cancel_are_recorded(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    """The console uploads through import jobs: the upload and a cancel are admin changes."""
    admin = await make_user(Role.admin)
    book = await make_book(client, admin)
    resp = await client.post(
        f"{API}/books/{book['id']}/imports",
        content=b"code\nJOB-AUDIT-1\nJOB-AUDIT-2\n",
        headers={**admin.headers, "Content-Type": "text/csv", "X-Request-ID": "req-upload-1"},
    )
    assert resp.status_code == 202, resp.text
    job = resp.json()
    resp = await client.delete(f"{API}/imports/{job['id']}", headers=admin.headers)
    assert resp.status_code == 200, resp.text
    # Cancelling again changes nothing, and records nothing.
    resp = await client.delete(f"{API}/imports/{job['id']}", headers=admin.headers)
    assert resp.status_code == 200, resp.text
    entries = await _audit(client, admin, target=f"book:{book['id']}")
    assert [e["action"] for e in entries] == [
        "book.codes.upload.cancel",
        "book.codes.upload",
        "book.create",
    ]
    cancel, upload, _ = entries
    assert upload["request_id"] == "req-upload-1"
    assert upload["after"] == {
        "import_id": job["id"],
        "received_bytes": job["received_bytes"],
        "state": "received",
    }
    assert cancel["before"] == {"import_id": job["id"], "state": "received"}
    assert cancel["after"] == {"import_id": job["id"], "state": "cancelled"}


async def test_a_failed_change_records_nothing(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    admin = await make_user(Role.admin)
    resp = await client.patch(
        f"{API}/books/{uuid.uuid4()}", json={"status": "paused"}, headers=admin.headers
    )
    assert_problem(resp, 404, "not-found")
    assert await _audit(client, admin, actor=str(admin.id)) == []


async def test_pages_walk_every_entry_newest_first(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    admin = await make_user(Role.admin)
    book = await make_book(client, admin)
    for status in ["paused", "active", "archived", "active", "paused"]:
        resp = await client.patch(
            f"{API}/books/{book['id']}", json={"status": status}, headers=admin.headers
        )
        assert resp.status_code == 200, resp.text
    seen: list[int] = []
    cursor = None
    while True:
        query = {"actor": str(admin.id), "limit": 2, **({"cursor": cursor} if cursor else {})}
        resp = await client.get(f"{API}/audit", params=query, headers=admin.headers)
        assert resp.status_code == 200, resp.text
        page = resp.json()
        seen += [e["id"] for e in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == 6 and seen == sorted(seen, reverse=True)
    latest = (await _audit(client, admin, actor=str(admin.id), limit=1))[0]
    since = await _audit(client, admin, actor=str(admin.id), since=latest["at"])
    assert latest["id"] in {e["id"] for e in since}
    assert_problem(
        await client.get(f"{API}/audit", params={"cursor": "nope"}, headers=admin.headers),
        422,
        "validation-error",
    )


async def test_the_audit_is_for_admins_and_append_only(
    client: httpx.AsyncClient, user: ApiUser, admin: ApiUser, conn: AsyncConnection
) -> None:
    assert_problem(await client.get(f"{API}/audit", headers=user.headers), 403, "forbidden")
    await make_book(client, admin)
    for sql in ["UPDATE admin_audit SET action = 'x'", "DELETE FROM admin_audit"]:
        with pytest.raises(DBAPIError, match="append-only"):
            async with conn.begin_nested():
                await conn.execute(text(sql))
