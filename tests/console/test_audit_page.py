"""The audit trail in the console (`/admin/audit`): admin changes newest first with the person,
the time, the action, the target by name and the fields before and after; filters by target,
person and time; further pages behind "Show more"."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from typing import Any

from playwright.sync_api import Page, expect

from tests.console.conftest import Account, Accounts, LiveServer, shot, sign_in


def _api(page: Page, server: LiveServer) -> Callable[..., Any]:
    csrf = next(c["value"] for c in page.context.cookies() if c["name"] == "cf_csrf")

    def call(method: str, path: str, body: object = None) -> Any:
        response = page.request.fetch(
            f"{server.url}/api/v1{path}",
            method=method,
            data=body,
            headers={"X-CSRF-Token": csrf},
        )
        assert response.ok, response.text()
        return response.json() if response.status != 204 else None

    return call


def _bulk_entries(accounts: Accounts, actor: Account, n: int) -> None:
    """`n` changes by `actor` to a book since deleted (straight into the append-only table)."""
    accounts.fetch(
        "INSERT INTO admin_audit (actor_id, request_id, action, target_type, target_id,"
        " before, after) SELECT $1, 'bulk-' || g, 'book.update', 'book', $2,"
        " jsonb_build_object('max_codes_per_user', g),"
        " jsonb_build_object('max_codes_per_user', g + 1)"
        " FROM generate_series(1, $3) g",
        actor.id,
        str(uuid.uuid4()),
        n,
    )


def test_admins_read_the_audit_trail_by_name_with_filters_and_more_pages(
    server: LiveServer, accounts: Accounts, new_page: Callable[..., Page]
) -> None:
    ana, bo, cy = (accounts.create("admin") for _ in range(3))
    tag = uuid.uuid4().hex[:6]

    # Ana runs a campaign; Bo opens and closes a store; Cy has made many changes.
    ana_page = new_page()
    sign_in(ana_page, server, ana)
    ana_api = _api(ana_page, server)
    book = ana_api("POST", "/books", {"name": f"Audit {tag}", "description": "Spring"})
    ana_api("PATCH", f"/books/{book['id']}", {"status": "paused", "max_codes_per_user": 2})
    ana_api("POST", f"/books/{book['id']}/codes/generate", {"count": 3})
    bo_page = new_page()
    sign_in(bo_page, server, bo)
    bo_api = _api(bo_page, server)
    store = bo_api("POST", "/stores", {"name": f"Kiosk {tag}", "lat": 40.4, "lng": -3.7})
    bo_api("DELETE", f"/stores/{store['id']}")
    shop = bo_api("POST", "/stores", {"name": f"Shop {tag}", "lat": 40.4, "lng": -3.7})
    product = bo_api(
        "POST",
        "/products",
        {"store_id": shop["id"], "name": "Lamp", "price_cents": 8000, "currency": "USD"},
    )
    promo = bo_api(
        "POST",
        "/promos",
        {
            "product_id": product["id"],
            "title": f"Lamps {tag}",
            "promo_price_cents": 4050,
            "starts_at": "2030-01-01T00:00:00Z",
            "ends_at": "2030-01-02T00:00:00Z",
        },
    )
    bo_api("PATCH", f"/promos/{promo['id']}", {"promo_price_cents": 3999})
    _bulk_entries(accounts, cy, 55)

    # From the book's page, its trail: the book chosen by name in the filter.
    page = ana_page
    page.goto(f"{server.url}/admin/books/{book['id']}")
    page.get_by_role("link", name="Changes by admins").click()
    expect(page).to_have_url(re.compile(r"/admin/audit\?target=book"))
    expect(page.get_by_label("Changed", exact=True)).to_have_value(f"book:{book['id']}")
    rows = page.locator("#audit tbody tr")
    expect(rows).to_have_count(3)
    expect(rows.nth(0)).to_contain_text("Generated codes")
    expect(rows.nth(1)).to_contain_text("Changed a campaign")
    expect(rows.nth(2)).to_contain_text("Created a campaign")
    expect(page.locator("#audit-count")).to_have_text("3 changes shown.")

    update = rows.filter(has_text=ana.email).filter(has_text="Changed a campaign")
    expect(update).to_have_count(1)
    expect(update.get_by_role("link", name=f"Audit {tag}")).to_have_attribute(
        "href", f"/admin/books/{book['id']}"
    )
    changes = update.locator(".diff")
    status = changes.locator("div", has=page.locator("dt", has_text="status"))
    expect(status.locator(".was")).to_have_text("from active")
    expect(status.locator(".now")).to_have_text("to paused")
    expect(
        changes.locator("div", has=page.locator("dt", has_text="max codes per user"))
    ).to_contain_text("1")
    expect(update).to_contain_text("book.update")

    # Only Cy's changes: fifty, then five more; focus goes to the first new one.
    page.get_by_label("Changed", exact=True).select_option("")
    page.get_by_label("Made by").select_option(label=cy.email)
    page.get_by_role("button", name="Show changes").click()
    expect(page).to_have_url(re.compile(f"actor={cy.id}"))
    expect(rows).to_have_count(50)
    expect(page.locator("#audit-count")).to_have_text("50 changes shown; more below.")
    expect(rows.first).to_contain_text(cy.email)
    more = page.get_by_role("button", name="Show more")
    more.focus()
    page.keyboard.press("Enter")
    expect(rows).to_have_count(55)
    expect(rows.nth(50)).to_be_focused()
    expect(more).to_be_hidden()
    expect(page.locator("#audit-count")).to_have_text("55 changes shown.")
    # Each row names its request (the id a log line carries), shortened with a copy button.
    expect(rows.nth(0).get_by_role("button", name="Copy request id bulk-55")).to_be_visible()
    expect(rows.nth(54).get_by_role("button", name="Copy request id bulk-1")).to_be_visible()
    expect(rows.nth(54)).to_contain_text("(no name)")

    # Bo's changes: the deleted store keeps its recorded name, shown as it was.
    page.get_by_label("Made by").select_option(label=bo.email)
    page.get_by_role("button", name="Show changes").click()
    expect(rows).to_have_count(6)
    deleted = rows.filter(has_text="Deleted a store")
    expect(deleted).to_contain_text(f"Kiosk {tag}")
    expect(deleted).to_contain_text("As it was:")
    expect(rows.filter(has_text="Created a store").filter(has_text=f"Kiosk {tag}")).to_have_count(1)
    # Prices in the product's currency, the product by name.
    created = rows.filter(has_text="Created a promo")
    expect(created).to_contain_text("$40.50")
    expect(created.locator(".diff")).to_contain_text("Lamp")
    price = rows.filter(has_text="Changed a promo").locator(".diff")
    expect(price.locator("dt")).to_have_text(["promo price"])
    expect(price.locator(".was")).to_have_text("from $40.50")
    expect(price.locator(".now")).to_have_text("to $39.99")

    # Since a time to come: nothing yet.
    page.get_by_label("Since").fill("2099-01-01T00:00")
    page.get_by_role("button", name="Show changes").click()
    expect(page.locator("#audit")).to_have_text("No change matches these filters.")

    # A target chosen and another typed: said on the field, nothing stale below.
    page.get_by_label("Since").fill("")
    page.get_by_label("Made by").select_option("")
    page.get_by_label("Changed", exact=True).select_option(label=f"Audit {tag}")
    other = page.get_by_label("Or a code or an id")
    other.fill(str(bo.id))
    page.get_by_role("button", name="Show changes").click()
    expect(other).to_have_attribute("aria-invalid", "true")
    expect(other).to_have_accessible_description(re.compile("not both"))
    expect(other).to_be_focused()

    # A typed target: the person whose role Ana changes.
    shopper = accounts.create("user")
    ana_api("PATCH", f"/users/{shopper.id}", {"role": "admin"})
    page.get_by_label("Changed", exact=True).select_option("")
    other.fill(str(shopper.id))
    page.get_by_role("button", name="Show changes").click()
    expect(other).not_to_have_attribute("aria-invalid", "true")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("Changed a role")
    expect(rows.first.locator("td").nth(3)).to_contain_text(shopper.email)
    expect(rows.first.locator(".now")).to_have_text("to admin")

    page.get_by_role("button", name="Clear filters").click()
    expect(page).to_have_url(f"{server.url}/admin/audit")
    page.get_by_label("Changed", exact=True).select_option(label=f"Audit {tag}")
    page.get_by_label("Made by").select_option(label=f"Me ({ana.email})")
    page.get_by_role("button", name="Show changes").click()
    expect(rows).to_have_count(3)
    shot(page, "admin-audit")
