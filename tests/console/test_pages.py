"""The other console pages: live notifications, dead-letter replay, history paging,
segments, and phone-width layout."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable

from playwright.sync_api import Page, expect

from tests.console.conftest import Accounts, LiveServer, shot, sign_in


def test_notification_arrives_live_and_is_marked_read(
    server: LiveServer, accounts: Accounts, new_page: Callable[..., Page]
) -> None:
    user = accounts.create("user")
    page = new_page(390, 844)
    sign_in(page, server, user, "/app/notifications")
    expect(page.locator("#live-state")).to_have_text("· live")
    expect(page.locator("#notifications")).to_contain_text("No notifications yet.")

    rows = accounts.fetch(
        "INSERT INTO notifications (user_id, promo_id, day) VALUES ($1, $2, current_date) "
        "RETURNING id",
        user.id,
        uuid.uuid4(),
    )
    accounts.fetch("SELECT pg_notify($1, $2)", f"user_{user.id.hex}", str(rows[0]["id"]))
    item = page.locator(f'[data-notification="{rows[0]["id"]}"]')
    expect(item).to_have_class("unread")
    expect(page.locator("#n-empty")).to_have_count(0)
    shot(page, "app-notifications")
    item.get_by_role("button", name="Mark as read").click()
    expect(page.locator(f'[data-notification="{rows[0]["id"]}"]')).not_to_have_class("unread")


def test_admin_replays_a_dead_letter(
    server: LiveServer, accounts: Accounts, new_page: Callable[..., Page]
) -> None:
    admin = accounts.create("admin")
    key = f"console-test-{uuid.uuid4().hex}"
    job_id = accounts.fetch(
        "INSERT INTO outbox (topic, key, status, attempts, max_attempts, last_error) "
        "VALUES ('webhook.deliver', $1, 'dead', 8, 8, 'HTTP 503') RETURNING id",
        key,
    )[0]["id"]
    try:
        page = new_page()
        sign_in(page, server, admin, "/admin/dead-letters")
        replay = page.get_by_role("button", name=f"Replay job {job_id}")
        expect(replay).to_be_visible()
        expect(page.locator("#dead-letters")).to_contain_text("HTTP 503")
        replay.click()
        expect(page.locator("#flash")).to_have_text(f"Job {job_id} queued again.")
        expect(replay).to_have_count(0)
        status = accounts.fetch("SELECT status FROM outbox WHERE id = $1", job_id)[0]["status"]
        assert status == "pending"
    finally:
        accounts.fetch("DELETE FROM outbox WHERE key = $1", key)


def test_history_filters_and_pages(
    server: LiveServer, accounts: Accounts, new_page: Callable[..., Page]
) -> None:
    admin = accounts.create("admin")
    user = accounts.create("user")
    page = new_page()
    sign_in(page, server, admin, "/admin/history")
    headers = {
        "X-CSRF-Token": next(c["value"] for c in page.context.cookies() if c["name"] == "cf_csrf")
    }
    api = page.request
    book = api.post(
        f"{server.url}/api/v1/books",
        data={"name": f"History {uuid.uuid4().hex[:8]}", "max_codes_per_user": None},
        headers=headers,
    ).json()
    api.post(
        f"{server.url}/api/v1/books/{book['id']}/codes/generate",
        data={"count": 12},
        headers=headers,
    )
    for _ in range(12):
        response = api.post(
            f"{server.url}/api/v1/books/{book['id']}/assign",
            data={"user_id": str(user.id)},
            headers=headers,
        )
        assert response.status == 201, response.text()

    # The campaign filter lists campaigns by name: the new one after a reload.
    page.reload()
    form = page.locator("#history-form")
    form.get_by_label("Campaign", exact=True).select_option(label=book["name"])
    form.get_by_label("Action").select_option("assigned")
    form.get_by_label("Per page").select_option("10")
    form.get_by_role("button", name="Show history").click()
    rows = page.locator("#entries tbody tr")
    expect(rows).to_have_count(10)
    # Names first: the campaign's name, its id second; the user's id shortened with a copy.
    expect(rows.first).to_contain_text(book["name"])
    expect(rows.first.locator("code.id").first).to_have_text(book["id"][:8])
    expect(rows.first).to_contain_text(user.email)
    expect(page.locator("#page-label")).to_have_text("· page 1")
    page.get_by_role("button", name="Next page").click()
    expect(rows).to_have_count(2)
    expect(page.get_by_role("button", name="Next page")).to_be_hidden()
    page.get_by_role("button", name="Previous page").click()
    expect(rows).to_have_count(10)
    form.get_by_label("User").fill(user.email)
    form.get_by_role("button", name="Show history").click()
    expect(rows).to_have_count(10)
    shot(page, "admin-history")

    # A time range: entries until a time before they were written, none; since it, all.
    form.get_by_label("Until").fill("2020-01-01T00:00")
    form.get_by_role("button", name="Show history").click()
    expect(rows).to_have_count(1)
    expect(rows.first).to_have_text("Nothing yet.")
    form.get_by_label("Until").fill("")
    form.get_by_label("Since").fill("2020-01-01T00:00")
    form.get_by_role("button", name="Show history").click()
    expect(rows).to_have_count(10)

    # The user sees the same twelve entries as their own history.
    user_page = new_page(390, 844)
    sign_in(user_page, server, user, "/app/history")
    expect(user_page.locator("#entries tbody tr")).to_have_count(12)
    expect(user_page.locator("#entries tbody tr").first).to_contain_text(book["name"])


def test_rule_segment_is_created_and_edited(
    server: LiveServer, accounts: Accounts, new_page: Callable[..., Page]
) -> None:
    admin = accounts.create("admin")
    page = new_page()
    sign_in(page, server, admin, "/admin/segments")
    form = page.locator("#segment-form")
    form.get_by_label("Name").fill("Adults who like coffee")
    form.get_by_label("Rule: users matching the rules below").check()
    form.get_by_label("Tags, any of").fill("coffee, tea")
    form.get_by_label("Minimum age").fill("18")
    form.get_by_role("button", name="Create segment").click()
    expect(page).to_have_url(re.compile(r"/admin/segments/[0-9a-f-]{36}$"))
    edit = page.locator("#edit-form")
    expect(edit.get_by_label("Tags, any of")).to_have_value("coffee, tea")
    expect(page.locator("#members-area")).to_be_hidden()
    edit.get_by_label("Minimum age").fill("21")
    edit.get_by_role("button", name="Save").click()
    expect(page.locator("#flash")).to_have_text("Segment saved.")
    page.reload()
    expect(page.locator("#edit-form").get_by_label("Minimum age")).to_have_value("21")


def test_user_pages_fit_a_phone_screen(
    server: LiveServer, accounts: Accounts, new_page: Callable[..., Page]
) -> None:
    user = accounts.create("user")
    page = new_page(360, 740)
    sign_in(page, server, user, "/app")
    for path in ("/app", "/app/promos", "/app/history", "/app/notifications"):
        page.goto(f"{server.url}{path}")
        expect(page.get_by_role("heading", level=1)).to_be_visible()
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 360, f"{path} is {width}px wide on a 360px screen"
