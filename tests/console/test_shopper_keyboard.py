"""A shopper with only a keyboard, on a desktop and on a phone: sign up, pick a campaign by
name, claim a code, lock it, redeem it; then reserve a promo near them and buy it. After every
action focus is shown, on screen, where the next step starts."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from tests.console.conftest import Accounts, LiveServer, sign_in
from tests.console.keys import assert_focus_shown, choose, tab_to

SIZES = {"desktop": (1280, 900), "phone": (390, 844)}
HERE = (41.3851, 2.1734)


def _campaign_and_promo(page: Page, server: LiveServer, tag: str) -> tuple[str, str]:
    """A campaign with codes, and a promo running at a store close to HERE."""
    csrf = next(c["value"] for c in page.context.cookies() if c["name"] == "cf_csrf")

    def call(path: str, body: object) -> Any:
        response = page.request.post(
            f"{server.url}/api/v1{path}", data=body, headers={"X-CSRF-Token": csrf}
        )
        assert response.ok, response.text()
        return response.json()

    name = f"Walk {tag}"
    book = call("/books", {"name": name, "description": "Five off shoes"})
    call(f"/books/{book['id']}/codes/generate", {"count": 3})
    store = call("/stores", {"name": f"Shoes {tag}", "lat": HERE[0], "lng": HERE[1] + 0.001})
    product = call(
        "/products",
        {"store_id": store["id"], "name": "Sneakers", "price_cents": 8000, "currency": "EUR"},
    )
    title = f"Sneakers {tag}"
    call(
        "/promos",
        {
            "product_id": product["id"],
            "title": title,
            "promo_price_cents": 4000,
            "quantity": 3,
            "starts_at": "2026-01-01T00:00:00Z",
            "ends_at": "2036-01-01T00:00:00Z",
            "radius_m": 2000,
        },
    )
    return name, title


@pytest.mark.parametrize("size", list(SIZES))
def test_shopper_claims_redeems_and_buys_by_keyboard(
    server: LiveServer, accounts: Accounts, new_page: Callable[..., Page], size: str
) -> None:
    tag = uuid.uuid4().hex[:6]
    admin_page = new_page()
    sign_in(admin_page, server, accounts.create("admin"))
    campaign, title = _campaign_and_promo(admin_page, server, tag)

    page = new_page(*SIZES[size])
    page.goto(f"{server.url}/app")
    expect(page).to_have_url(re.compile(r"/login\?next=/app"))

    # Sign up.
    tab_to(page, page.get_by_role("link", name="Create an account"))
    page.keyboard.press("Enter")
    expect(page).to_have_url(f"{server.url}/signup")
    tab_to(page, page.get_by_label("Email"))
    page.keyboard.type(f"walker-{tag}@example.com")
    tab_to(page, page.get_by_label("Password"))
    page.keyboard.type("a-long-enough-password")
    page.keyboard.press("Enter")
    expect(page).to_have_url(f"{server.url}/app")

    # Pick the campaign by its name and claim a code: focus goes to the new code's Lock.
    select = page.get_by_label("Campaign", exact=True)
    expect(select.locator("option", has_text=campaign)).to_have_count(1)
    choose(page, select, campaign)
    expect(page.locator("#claim-book-about")).to_contain_text("Five off shoes")
    tab_to(page, page.get_by_role("button", name="Claim a code from this campaign"))
    page.keyboard.press("Enter")
    expect(page.locator("#claim-result")).to_contain_text(f"Your code from {campaign}:")
    code = page.locator("#claim-result code").inner_text()
    row = page.locator(f'tr[data-code="{code}"]')
    lock = row.get_by_role("button", name=f"Lock {code}")
    expect(lock).to_be_focused()
    assert_focus_shown(page)

    # Lock: focus moves to Redeem. Redeem: the row says so and keeps focus.
    page.keyboard.press("Enter")
    expect(row).to_have_attribute("data-status", "locked")
    expect(row.get_by_role("button", name=f"Redeem {code}")).to_be_focused()
    assert_focus_shown(page)
    page.keyboard.press("Enter")
    expect(row).to_have_attribute("data-status", "redeemed")
    expect(row.locator("td", has_text="redeemed")).to_be_focused()
    assert_focus_shown(page)

    # To the promos, through the menu (folded behind its button on a phone).
    if size == "phone":
        menu = page.get_by_role("button", name="Menu")
        tab_to(page, menu)
        page.keyboard.press("Enter")
        expect(menu).to_have_attribute("aria-expanded", "true")
    tab_to(page, page.get_by_role("link", name="Promos near me"))
    page.keyboard.press("Enter")
    expect(page).to_have_url(f"{server.url}/app/promos")
    expect(page.locator("#reservations table")).to_be_visible()  # the page's script runs

    # Where I am: typed, sent with Enter; focus stays in the form.
    tab_to(page, page.get_by_label("Latitude"))
    page.keyboard.type(str(HERE[0]))
    tab_to(page, page.get_by_label("Longitude"))
    page.keyboard.type(str(HERE[1]))
    page.keyboard.press("Enter")
    card = page.locator("article", has=page.get_by_role("heading", name=title))
    expect(card).to_be_visible()
    expect(page.get_by_label("Longitude")).to_be_focused()

    # Reserve: focus moves to Buy. Buy: focus on the purchase's confirmation.
    tab_to(page, card.get_by_role("button", name=f"Reserve {title}"))
    page.keyboard.press("Enter")
    buy = card.get_by_role("button", name=f"Buy {title}")
    expect(buy).to_be_focused()
    assert_focus_shown(page)
    expect(card.get_by_role("timer")).to_have_text(re.compile(r"\d:\d\d left"))
    page.keyboard.press("Enter")
    done = card.get_by_role("status")
    expect(done).to_have_text("Purchased. Enjoy!")
    expect(done).to_be_focused()
    assert_focus_shown(page)
    expect(
        page.locator("#reservations tr", has_text=title).get_by_text("Purchased")
    ).to_be_visible()
