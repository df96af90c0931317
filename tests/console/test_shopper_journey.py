"""A shopper's first visit: sign up in the console, pick a campaign by name, claim a code,
lock it and redeem it, on a phone-sized screen."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable

from playwright.sync_api import Page, expect

from tests.console.conftest import Accounts, LiveServer, shot, sign_in


def test_shopper_signs_up_and_claims_locks_and_redeems_by_campaign_name(
    server: LiveServer, accounts: Accounts, new_page: Callable[..., Page]
) -> None:
    admin = accounts.create("admin")
    admin_page = new_page()
    sign_in(admin_page, server, admin, "/admin")
    csrf = next(c["value"] for c in admin_page.context.cookies() if c["name"] == "cf_csrf")
    name = f"Autumn {uuid.uuid4().hex[:6]}"
    book = admin_page.request.post(
        f"{server.url}/api/v1/books",
        data={"name": name, "description": "Fifteen percent off coats"},
        headers={"X-CSRF-Token": csrf},
    ).json()
    admin_page.request.post(
        f"{server.url}/api/v1/books/{book['id']}/codes/generate",
        data={"count": 3},
        headers={"X-CSRF-Token": csrf},
    )

    page = new_page(390, 844)
    page.goto(f"{server.url}/app")
    page.get_by_role("link", name="Create an account").click()
    expect(page.get_by_role("heading", name="Create an account", level=1)).to_be_visible()
    email = f"shopper-{uuid.uuid4().hex[:8]}@example.com"
    page.get_by_label("Email").fill("not-an-email")
    page.get_by_label("Password").fill("short")
    page.get_by_role("button", name="Create account").click()
    expect(page.get_by_label("Email")).to_have_attribute("aria-invalid", "true")
    expect(page.get_by_label("Email")).to_have_accessible_description(
        "Enter an email address like ana@example.com."
    )
    expect(page.get_by_label("Password")).to_have_accessible_description(
        "Use at least 8 characters."
    )
    expect(page.get_by_label("Email")).to_have_value("not-an-email")
    expect(page.get_by_label("Email")).to_be_focused()
    shot(page, "signup-errors")

    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill("a-good-long-password")
    page.get_by_role("button", name="Create account").click()
    expect(page).to_have_url(f"{server.url}/app")

    campaign = page.get_by_label("Campaign", exact=True)
    campaign.select_option(label=name)
    expect(page.locator("#claim-book-about")).to_contain_text("Fifteen percent off coats")
    page.get_by_role("button", name="Claim a code from this campaign").click()
    expect(page.locator("#claim-result")).to_contain_text(f"Your code from {name}:")
    code = page.locator("#claim-result code").inner_text()
    row = page.locator(f'tr[data-code="{code}"]')
    # Keyboard only: Lock with Enter; focus stays in the row, on its next action.
    row.get_by_role("button", name=f"Lock {code}").focus()
    page.keyboard.press("Enter")
    expect(row).to_have_attribute("data-status", "locked")
    expect(row.get_by_role("button", name=f"Redeem {code}")).to_be_focused()
    expect(row.get_by_role("timer")).to_have_text(re.compile(r"\d:\d\d left"))
    row.get_by_role("button", name=f"Redeem {code}").click()
    expect(row).to_have_attribute("data-status", "redeemed")
    shot(page, "app-codes-campaigns")

    # A failed claim after a successful one: only the new problem shows.
    expect(page.locator("#claim-result")).to_contain_text("Your code from")
    page.get_by_label("Or a specific code you were given").fill("NO-SUCH-CODE")
    page.get_by_role("button", name="Claim this code").click()
    expect(page.locator("#claim-code-form").get_by_role("alert")).to_be_visible()
    expect(page.locator("#claim-result")).to_be_empty()

    # The same email cannot sign up twice: said on the field.
    other = new_page(390, 844)
    other.goto(f"{server.url}/signup")
    other.get_by_label("Email").fill(email)
    other.get_by_label("Password").fill("another-long-password")
    other.get_by_role("button", name="Create account").click()
    expect(other.get_by_label("Email")).to_have_accessible_description(
        re.compile("already registered")
    )
