"""Every console page has a journey driven by the keyboard alone (Tab, Shift+Tab, Enter, Space,
Escape and typing; never a mouse), with focus checked after every action: it is shown, on the
screen, and where the next step starts. The journeys of the books, the book, the shopper's
codes and promos, sign-in and sign-up pages are in test_keyboard.py and
test_shopper_keyboard.py; the other pages' are here, and a page added to the console without
one fails the first test."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from tests.console import test_keyboard, test_shopper_keyboard
from tests.console.conftest import Accounts, LiveServer, served_pages
from tests.console.keys import assert_focus_shown, choose, shift_tab_to, tab_to
from tests.console.test_keyboard import keyboard_sign_in

SIZES = {"desktop": (1280, 900), "phone": (390, 844)}

# Each page the console serves, and the keyboard-only journey that goes through it.
JOURNEYS: dict[str, str] = {
    "/login": "test_keyboard::test_campaign_manager_runs_a_campaign_by_keyboard",
    "/signup": "test_shopper_keyboard::test_shopper_claims_redeems_and_buys_by_keyboard",
    "/admin": "test_keyboard::test_campaign_manager_runs_a_campaign_by_keyboard",
    "/admin/books/{book_id}": "test_keyboard::test_campaign_manager_runs_a_campaign_by_keyboard",
    "/admin/segments": "test_keyboard_pages::test_segments_by_keyboard",
    "/admin/segments/{segment_id}": "test_keyboard_pages::test_segments_by_keyboard",
    "/admin/stores": "test_keyboard_pages::test_stores_and_products_by_keyboard",
    "/admin/promos": "test_keyboard_pages::test_promos_by_keyboard",
    "/admin/promos/{promo_id}": "test_keyboard_pages::test_promos_by_keyboard",
    "/admin/history": "test_keyboard_pages::test_admin_history_by_keyboard",
    "/admin/audit": "test_keyboard_pages::test_audit_trail_by_keyboard",
    "/admin/dead-letters": "test_keyboard_pages::test_dead_letters_by_keyboard",
    "/app": "test_shopper_keyboard::test_shopper_claims_redeems_and_buys_by_keyboard",
    "/app/promos": "test_shopper_keyboard::test_shopper_claims_redeems_and_buys_by_keyboard",
    "/app/history": "test_keyboard_pages::test_my_history_and_notifications_by_keyboard",
    "/app/notifications": "test_keyboard_pages::test_my_history_and_notifications_by_keyboard",
}


def test_every_console_page_has_a_keyboard_journey() -> None:
    served = served_pages()
    assert served == set(JOURNEYS)
    modules = {
        "test_keyboard": test_keyboard,
        "test_shopper_keyboard": test_shopper_keyboard,
        "test_keyboard_pages": globals(),
    }
    for journey in JOURNEYS.values():
        module, name = journey.split("::")
        found = modules[module]
        assert callable(found.get(name) if isinstance(found, dict) else getattr(found, name)), (
            journey
        )


def _api(page: Page, server: LiveServer) -> Callable[..., Any]:
    """The API as the signed-in page's user (set-up that is not the journey itself)."""
    csrf = next(c["value"] for c in page.context.cookies() if c["name"] == "cf_csrf")

    def call(method: str, path: str, body: object = None) -> Any:
        response = page.request.fetch(
            f"{server.url}/api/v1{path}", method=method, data=body, headers={"X-CSRF-Token": csrf}
        )
        assert response.ok, response.text()
        return response.json() if response.status != 204 else None

    return call


def _focused(page: Page, target: Any) -> None:
    expect(target).to_be_focused()
    assert_focus_shown(page)


def test_segments_by_keyboard(
    server: LiveServer, accounts: Accounts, new_page: Callable[..., Page]
) -> None:
    admin, member, other = (accounts.create(r) for r in ("admin", "user", "user"))
    tag = uuid.uuid4().hex[:6]
    page = new_page()
    keyboard_sign_in(page, server, admin, "/admin/segments")
    expect(page.locator("#segments")).not_to_contain_text("Loading…")

    # Create a static segment: Enter on its button opens the new segment's page.
    tab_to(page, page.get_by_label("Name"))
    page.keyboard.type(f"Regulars {tag}")
    tab_to(page, page.get_by_role("button", name="Create segment"))
    page.keyboard.press("Enter")
    expect(page).to_have_url(re.compile(r"/admin/segments/[0-9a-f-]{36}$"))
    expect(page.locator("#segment-name")).to_have_text(f"Regulars {tag}")

    # Add two members by id: focus stays on the button, ready for more.
    add = page.get_by_role("button", name="Add members")
    tab_to(page, page.get_by_label("User ids"))
    page.keyboard.type(f"{member.id}, {other.id}")
    tab_to(page, add)
    page.keyboard.press("Enter")
    expect(page.locator("#flash")).to_have_text("2 members added.")
    members = page.locator("#members")
    expect(members).to_contain_text(member.email)
    expect(members).to_contain_text(other.email)
    _focused(page, add)

    # Remove one (above, so Shift+Tab): focus goes to the next member's Remove, then, with
    # the list empty, to the list's heading.
    first = members.locator("tbody tr").first.locator("td").first.inner_text()
    second = other.email if first == member.email else member.email
    shift_tab_to(page, page.get_by_role("button", name=f"Remove {first}"))
    page.keyboard.press("Enter")
    expect(members).not_to_contain_text(first)
    _focused(page, page.get_by_role("button", name=f"Remove {second}"))
    page.keyboard.press("Enter")
    expect(members).not_to_contain_text(second)
    _focused(page, page.get_by_role("heading", name="Members", exact=True))

    # Rename with Enter in the field: saved, focus stays in the field.
    name = page.locator("#edit-name")
    shift_tab_to(page, name)
    page.keyboard.press("Control+a")
    page.keyboard.type(f"Regulars {tag} (spring)")
    page.keyboard.press("Enter")
    expect(page.locator("#flash")).to_have_text("Segment saved.")
    expect(page.locator("#segment-name")).to_have_text(f"Regulars {tag} (spring)")
    _focused(page, name)

    # Back to the list by its link.
    shift_tab_to(page, page.get_by_role("link", name="← All segments"))
    page.keyboard.press("Enter")
    expect(page).to_have_url(f"{server.url}/admin/segments")
    expect(page.get_by_role("link", name=f"Regulars {tag} (spring)")).to_be_visible()


def test_stores_and_products_by_keyboard(
    server: LiveServer, accounts: Accounts, new_page: Callable[..., Page]
) -> None:
    admin = accounts.create("admin")
    tag = uuid.uuid4().hex[:6]
    page = new_page()
    keyboard_sign_in(page, server, admin, "/admin/stores")
    expect(page.locator("#stores")).not_to_contain_text("Loading…")

    # A store: Enter on Save; focus stays on the button.
    store_form = page.locator("#store-form")
    tab_to(page, store_form.get_by_label("Name"))
    page.keyboard.type(f"Kiosk {tag}")
    tab_to(page, store_form.get_by_label("Latitude"))
    page.keyboard.type("41.39")
    tab_to(page, store_form.get_by_label("Longitude"))
    page.keyboard.type("2.17")
    save_store = store_form.get_by_role("button", name="Save store")
    tab_to(page, save_store)
    page.keyboard.press("Enter")
    expect(page.locator("#flash")).to_have_text("Store created.")
    expect(page.locator("#stores")).to_contain_text(f"Kiosk {tag}")
    _focused(page, save_store)

    # A product of it, its store picked by typing the name; the price in euros.
    product_form = page.locator("#product-form")
    choose(page, product_form.get_by_label("Store"), f"Kiosk {tag}")
    tab_to(page, product_form.get_by_label("Name"))
    page.keyboard.type(f"Lamp {tag}")
    tab_to(page, product_form.get_by_label("Price"))
    page.keyboard.type("12.50")
    save_product = product_form.get_by_role("button", name="Save product")
    tab_to(page, save_product)
    page.keyboard.press("Enter")
    expect(page.locator("#flash")).to_have_text("Product created.")
    expect(page.locator("#products tr", has_text=f"Lamp {tag}")).to_contain_text("€12.50")
    _focused(page, save_product)

    # Edit the store (its button is above): focus goes to the filled form; Cancel edit puts
    # it back on the form's first field.
    shift_tab_to(page, page.get_by_role("button", name=f"Edit Kiosk {tag}"))
    page.keyboard.press("Enter")
    _focused(page, store_form.get_by_label("Name"))
    expect(page.locator("#store-form-h")).to_have_text("Edit store")
    expect(store_form.get_by_label("Name")).to_have_value(f"Kiosk {tag}")
    tab_to(page, store_form.get_by_role("button", name="Cancel edit"))
    page.keyboard.press("Enter")
    expect(page.locator("#store-form-h")).to_have_text("New store")
    _focused(page, store_form.get_by_label("Name"))

    # Distances from a typed point, sent with Enter in the last field.
    distance = page.locator("#distance-form")
    tab_to(page, distance.get_by_label("From latitude"))
    page.keyboard.type("41.39")
    tab_to(page, distance.get_by_label("From longitude"))
    page.keyboard.type("2.17")
    page.keyboard.press("Enter")
    expect(page.locator("#distances")).to_contain_text(f"Kiosk {tag}")
    _focused(page, distance.get_by_label("From longitude"))


def test_promos_by_keyboard(
    server: LiveServer, accounts: Accounts, new_page: Callable[..., Page]
) -> None:
    admin = accounts.create("admin")
    tag = uuid.uuid4().hex[:6]
    page = new_page()
    keyboard_sign_in(page, server, admin, "/admin/promos")
    call = _api(page, server)
    store = call("POST", "/stores", {"name": f"Deli {tag}", "lat": 41.39, "lng": 2.17})
    call(
        "POST",
        "/products",
        {"store_id": store["id"], "name": f"Cheese {tag}", "price_cents": 900, "currency": "EUR"},
    )
    page.reload()  # the new product in the form's list
    form = page.locator("#promo-form")
    product = form.get_by_label("Product")
    expect(product.locator("option", has_text=f"Cheese {tag}")).to_have_count(1)

    # A promo: title, product by typing its name, price; its window is filled in already.
    tab_to(page, form.get_by_label("Title"))
    page.keyboard.type(f"Half cheese {tag}")
    choose(page, product, f"Cheese {tag}")
    tab_to(page, form.get_by_label("Promo price"))
    page.keyboard.type("4.50")
    tab_to(page, form.get_by_role("button", name="Create promo"))
    page.keyboard.press("Enter")
    expect(page).to_have_url(re.compile(r"/admin/promos/[0-9a-f-]{36}$"))
    expect(page.locator("#promo-title")).to_have_text(f"Half cheese {tag}")

    # Its report by the hour, the period picked by typing.
    period = page.get_by_label("Period")
    choose(page, period, "By hour")
    expect(period).to_have_value("hour")
    _focused(page, period)

    # Rename it with Enter in the title field: saved, focus stays there.
    title = page.locator("#edit-title")
    expect(title).to_have_value(f"Half cheese {tag}")
    tab_to(page, title)
    page.keyboard.press("Control+a")
    page.keyboard.type(f"Cheese deal {tag}")
    page.keyboard.press("Enter")
    expect(page.locator("#flash")).to_have_text("Promo saved.")
    expect(page.locator("#promo-title")).to_have_text(f"Cheese deal {tag}")
    _focused(page, title)

    # Back to the list; a promo's link keeps focus through the list's refresh (every 10 s).
    shift_tab_to(page, page.get_by_role("link", name="← All promos"))
    page.keyboard.press("Enter")
    expect(page).to_have_url(f"{server.url}/admin/promos")
    link = page.locator("#promos").get_by_role("link", name=f"Cheese deal {tag}")
    expect(link).to_be_visible()
    tab_to(page, link)
    updated = page.locator("#promos-updated")
    before = updated.inner_text()
    expect(updated).not_to_have_text(before, timeout=20_000)
    _focused(page, link)
    page.keyboard.press("Enter")
    expect(page).to_have_url(re.compile(r"/admin/promos/[0-9a-f-]{36}$"))
    expect(page.locator("#promo-title")).to_have_text(f"Cheese deal {tag}")


@pytest.mark.parametrize("size", list(SIZES))
def test_admin_history_by_keyboard(
    server: LiveServer, accounts: Accounts, new_page: Callable[..., Page], size: str
) -> None:
    admin, shopper = accounts.create("admin"), accounts.create("user")
    width, height = SIZES[size]
    page = new_page(width, height)
    keyboard_sign_in(page, server, admin, "/admin/history")
    call = _api(page, server)
    book = call(
        "POST", "/books", {"name": f"Trail {uuid.uuid4().hex[:6]}", "max_codes_per_user": None}
    )
    call("POST", f"/books/{book['id']}/codes/generate", {"count": 27})
    for _ in range(27):
        call("POST", f"/books/{book['id']}/assign", {"user_id": str(shopper.id)})
    form = page.locator("#history-form")
    rows = page.locator("#entries tbody tr")
    expect(rows.first).to_be_visible()  # the first search ran

    # The person by their email (any case), 25 a page, sent with Enter on the button.
    tab_to(page, form.get_by_label("User"))
    page.keyboard.type(shopper.email.upper())
    per_page = form.get_by_label("Per page")
    choose(page, per_page, "25")
    expect(per_page).to_have_value("25")
    show = form.get_by_role("button", name="Show history")
    tab_to(page, show)
    page.keyboard.press("Enter")
    expect(rows).to_have_count(25)
    expect(rows.first).to_contain_text(shopper.email)
    expect(rows.first).to_contain_text(book["name"])
    _focused(page, show)
    assert page.evaluate("document.documentElement.scrollWidth") <= width
    # On a phone each entry reads as a card, its cells labelled; no sideways scrolling.
    display = rows.first.evaluate("row => getComputedStyle(row).display")
    assert display == ("block" if size == "phone" else "table-row"), display

    # The next page: the last, so its button goes and focus moves to the list's heading.
    tab_to(page, page.get_by_role("button", name="Next page"))
    page.keyboard.press("Enter")
    expect(rows).to_have_count(2)
    expect(page.locator("#page-label")).to_have_text("· page 2")
    _focused(page, page.locator("#entries-h"))
    tab_to(page, page.get_by_role("button", name="Previous page"))
    page.keyboard.press("Enter")
    expect(rows).to_have_count(25)
    _focused(page, page.locator("#entries-h"))

    # An email nobody has: said on the field, focus on it, no rows of the earlier search.
    user_field = form.get_by_label("User")
    shift_tab_to(page, user_field)
    page.keyboard.press("Control+a")
    page.keyboard.type("nobody-here@example.com")
    page.keyboard.press("Enter")
    expect(user_field).to_have_attribute("aria-invalid", "true")
    expect(user_field).to_have_accessible_description(
        "No account has the email nobody-here@example.com."
    )
    _focused(page, user_field)
    expect(rows).to_have_count(0)

    # Typing again and sending clears the mark.
    page.keyboard.press("Control+a")
    page.keyboard.type(str(shopper.id))
    page.keyboard.press("Enter")
    expect(rows).to_have_count(25)
    expect(user_field).not_to_have_attribute("aria-invalid", "true")
    assert page.evaluate("document.documentElement.scrollWidth") <= width


def test_audit_trail_by_keyboard(
    server: LiveServer, accounts: Accounts, new_page: Callable[..., Page]
) -> None:
    admin = accounts.create("admin")
    page = new_page()
    keyboard_sign_in(page, server, admin, "/admin/audit")
    call = _api(page, server)
    book = call("POST", "/books", {"name": f"Ledger {uuid.uuid4().hex[:6]}"})
    call("PATCH", f"/books/{book['id']}", {"status": "paused"})
    page.reload()
    rows = page.locator("#audit tbody tr")
    expect(rows.first).to_be_visible()

    # My own changes: the person picked by typing, sent with Enter on the button.
    choose(page, page.get_by_label("Made by"), "Me (")
    show = page.get_by_role("button", name="Show changes")
    tab_to(page, show)
    page.keyboard.press("Enter")
    expect(rows).to_have_count(2)
    expect(rows.first).to_contain_text("Changed a campaign")
    expect(rows.first).to_contain_text(book["name"])
    _focused(page, show)

    # The campaign's link goes to its page.
    tab_to(page, rows.first.get_by_role("link", name=book["name"]))
    page.keyboard.press("Enter")
    expect(page).to_have_url(f"{server.url}/admin/books/{book['id']}")
    page.go_back()
    expect(rows.first).to_be_visible()

    # Clear filters (Enter): everyone's changes again, focus stays on the button.
    clear = page.get_by_role("button", name="Clear filters")
    tab_to(page, clear)
    page.keyboard.press("Enter")
    expect(page).to_have_url(f"{server.url}/admin/audit")
    expect(page.get_by_label("Made by")).to_have_value("")
    _focused(page, clear)


def test_dead_letters_by_keyboard(
    server: LiveServer, accounts: Accounts, new_page: Callable[..., Page]
) -> None:
    admin = accounts.create("admin")
    key = f"console-keys-{uuid.uuid4().hex}"
    jobs = [
        accounts.fetch(
            "INSERT INTO outbox (topic, key, status, attempts, max_attempts, last_error) "
            "VALUES ('webhook.deliver', $1, 'dead', 8, 8, 'HTTP 502') RETURNING id",
            f"{key}-{i}",
        )[0]["id"]
        for i in range(2)
    ]
    try:
        page = new_page()
        keyboard_sign_in(page, server, admin, "/admin/dead-letters")
        replays = [page.get_by_role("button", name=f"Replay job {job}") for job in jobs]
        expect(replays[1]).to_be_visible()
        # Replay one: it leaves the list and focus goes to a Replay still there.
        tab_to(page, replays[0])
        page.keyboard.press("Enter")
        expect(page.locator("#flash")).to_have_text(f"Job {jobs[0]} queued again.")
        expect(replays[0]).to_have_count(0)
        focused = page.evaluate("document.activeElement.getAttribute('aria-label') || ''")
        assert focused.startswith("Replay job "), focused
        assert_focus_shown(page)
        # Then the other one, reached from there.
        tab_to(page, replays[1], key="Shift+Tab" if _precedes_focus(page, replays[1]) else "Tab")
        page.keyboard.press("Enter")
        expect(replays[1]).to_have_count(0)
        assert page.evaluate("document.activeElement !== document.body")
        assert_focus_shown(page)
        statuses = accounts.fetch("SELECT status FROM outbox WHERE key LIKE $1 || '%'", key)
        assert [s["status"] for s in statuses] == ["pending", "pending"]
    finally:
        accounts.fetch("DELETE FROM outbox WHERE key LIKE $1 || '%'", key)


def _precedes_focus(page: Page, target: Any) -> bool:
    """Is `target` before the focused element in the page (so Shift+Tab reaches it)?"""
    return bool(
        target.evaluate(
            "node => !!(document.activeElement.compareDocumentPosition(node)"
            " & Node.DOCUMENT_POSITION_PRECEDING)"
        )
    )


def test_my_history_and_notifications_by_keyboard(
    server: LiveServer, accounts: Accounts, new_page: Callable[..., Page]
) -> None:
    admin, shopper = accounts.create("admin"), accounts.create("user")
    tag = uuid.uuid4().hex[:6]
    admin_page = new_page()
    keyboard_sign_in(admin_page, server, admin, "/admin")
    call = _api(admin_page, server)
    for name in ("Autumn", "Winter"):
        book = call("POST", "/books", {"name": f"{name} {tag}"})
        call("POST", f"/books/{book['id']}/codes/generate", {"count": 1})
        call("POST", f"/books/{book['id']}/assign", {"user_id": str(shopper.id)})
    page = new_page(390, 844)
    keyboard_sign_in(page, server, shopper, "/app/history")
    rows = page.locator("#entries tbody tr")
    expect(rows).to_have_count(2)

    # Only one campaign: picked by typing its name, sent with Enter on Show.
    choose(page, page.get_by_label("Campaign", exact=True), f"Winter {tag}")
    show = page.get_by_role("button", name="Show", exact=True)
    tab_to(page, show)
    page.keyboard.press("Enter")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text(f"Winter {tag}")
    _focused(page, show)

    # A notification: Mark as read leaves the item with its link, which takes focus.
    promo_id = uuid.uuid4()
    note = accounts.fetch(
        "INSERT INTO notifications (user_id, promo_id, day) VALUES ($1, $2, current_date) "
        "RETURNING id",
        shopper.id,
        promo_id,
    )[0]["id"]
    menu = page.get_by_role("button", name="Menu")
    shift_tab_to(page, menu)
    page.keyboard.press("Enter")
    expect(menu).to_have_attribute("aria-expanded", "true")
    tab_to(page, page.get_by_role("link", name="Notifications"))
    page.keyboard.press("Enter")
    expect(page).to_have_url(f"{server.url}/app/notifications")
    item = page.locator(f'[data-notification="{note}"]')
    expect(item).to_have_class("unread")
    tab_to(page, item.get_by_role("button", name="Mark as read"))
    page.keyboard.press("Enter")
    expect(item).not_to_have_class("unread")
    link = item.get_by_role("link")
    _focused(page, link)
    page.keyboard.press("Enter")
    expect(page).to_have_url(f"{server.url}/app/promos#promo-{promo_id}")
