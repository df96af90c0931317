"""An admin puts a store's product on a flash promo from the console; a user nearby reserves
a unit (60-second countdown) and buys it from /app/promos."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable

from playwright.sync_api import Page, expect

from tests.console.conftest import Accounts, LiveServer, shot, sign_in

# Somewhere quiet, so promos from other tests are never near.
STORE_LAT, STORE_LNG = -45.8788, 170.5028


def test_admin_creates_a_promo_and_a_user_nearby_reserves_and_buys_it(
    server: LiveServer, accounts: Accounts, new_page: Callable[..., Page]
) -> None:
    admin = accounts.create("admin")
    shopper = accounts.create("user")
    tag = uuid.uuid4().hex[:6]

    page = new_page()
    sign_in(page, server, admin, "/admin/stores")

    store = page.locator("#store-form")
    store.get_by_label("Name").fill(f"Harbour {tag}")
    store.get_by_label("Latitude").fill(str(STORE_LAT))
    store.get_by_label("Longitude").fill(str(STORE_LNG))
    store.get_by_label("Address").fill("1 Quay Street")
    store.get_by_role("button", name="Save store").click()
    expect(page.locator("#stores")).to_contain_text(f"Harbour {tag}")

    product = page.locator("#product-form")
    product.get_by_label("Store").select_option(label=f"Harbour {tag}")
    product.get_by_label("Name").fill(f"Flat white {tag}")
    # Prices are typed in currency units, in the product's own currency.
    product.get_by_label("Price").fill("4.50")
    product.get_by_label("Currency", exact=True).fill("USD")
    product.get_by_role("button", name="Save product").click()
    expect(page.locator("#products")).to_contain_text(f"Flat white {tag}")
    expect(page.locator("#products")).to_contain_text("$4.50")

    distances = page.locator("#distance-form")
    distances.get_by_label("From latitude").fill(str(STORE_LAT + 0.01))
    distances.get_by_label("From longitude").fill(str(STORE_LNG))
    distances.get_by_role("button", name="Show distances").click()
    expect(page.locator("#distances")).to_contain_text(re.compile(r"1\.1\d km"))
    shot(page, "admin-stores")

    page.get_by_role("link", name="Promos", exact=True).click()
    promo = page.locator("#promo-form")
    promo.get_by_label("Title").fill(f"Coffee for a euro {tag}")
    choice = promo.get_by_label("Product").locator("option", has_text=f"Flat white {tag}")
    promo.get_by_label("Product").select_option(value=choice.get_attribute("value"))
    expect(promo.locator("[data-currency]")).to_have_text("(in USD; regular price $4.50)")
    price = promo.get_by_label("Promo price")
    price.fill("0.999")
    promo.get_by_label("Units").fill("3")
    promo.get_by_role("button", name="Create promo").click()
    expect(price).to_have_attribute("aria-invalid", "true")
    expect(price).to_have_accessible_description("Enter an amount in USD, like 12.50.")
    price.fill("0.99")
    promo.get_by_role("button", name="Create promo").click()
    expect(page).to_have_url(re.compile(r"/admin/promos/[0-9a-f-]{36}$"))
    expect(page.locator("#promo-status")).to_have_text("running")
    expect(page.locator('[data-stat="free"] dd')).to_have_text("3")
    expect(page.locator("#promo-form").get_by_label("Promo price")).to_have_value("0.99")
    promo_url = page.url
    page.get_by_role("link", name="Promos", exact=True).click()
    listed = page.locator(f'tr[data-promo="{promo_url.rsplit("/", 1)[1]}"]')
    expect(listed).to_contain_text("$0.99")
    page.goto(promo_url)

    # The shopper, a kilometre away, types their coordinates.
    user_page = new_page(390, 844)
    sign_in(user_page, server, shopper, "/app/promos")
    user_page.get_by_label("Latitude").fill(str(STORE_LAT + 0.009))
    user_page.get_by_label("Longitude").fill(str(STORE_LNG))
    user_page.get_by_role("button", name="Show promos near me").click()
    card = user_page.get_by_role("article", name=f"Coffee for a euro {tag}")
    expect(card).to_contain_text("3 left")
    expect(card).to_contain_text("$0.99")
    expect(card).to_contain_text("$4.50")
    expect(card).to_contain_text(re.compile(r"1\.0\d km"))

    card.get_by_role("button", name=f"Reserve Coffee for a euro {tag}").click()
    timer = card.get_by_role("timer")
    expect(timer).to_have_text(re.compile(r"^(1:00|0:5\d) left$"))
    shot(user_page, "app-promo-reserved")

    # The admin's stats show the hold while the promo runs.
    expect(page.locator('[data-stat="held"] dd')).to_have_text("1")

    card.get_by_role("button", name=f"Buy Coffee for a euro {tag}").click()
    expect(card.get_by_role("status")).to_have_text("Purchased. Enjoy!")
    purchased_row = user_page.locator("#reservations tr[data-status=purchased]")
    expect(purchased_row).to_contain_text("Purchased")
    expect(purchased_row).to_contain_text(f"Flat white {tag} at Harbour {tag}")
    expect(purchased_row).to_contain_text("Bought ")
    shot(user_page, "app-promo-purchased")

    expect(page.locator('[data-stat="sold"] dd')).to_have_text("1")
    # The report by the hour: one reserved, one sold, as a chart and as a table.
    page.get_by_label("Period").select_option("hour")
    report = page.locator("#report")
    expect(report).to_have_attribute(
        "data-summary", re.compile(r"(48|49) hours: Reserved 1, Sold 1, Notified \d+")
    )
    report.get_by_text("Show the numbers as a table").click()
    expect(report.get_by_role("table").locator("thead th")).to_have_text(
        ["Hour", "Reserved", "Sold", "Notified", "Notifications read"]
    )
    expect(page.locator('[data-stat="free"] dd')).to_have_text("2")
    shot(page, "admin-promo")

    # After a reload the purchase still shows as one, not as a fresh offer.
    user_page.reload()
    expect(card.locator("[data-bought]")).to_contain_text("You bought this on")
    expect(user_page.locator("#reservations")).not_to_contain_text("Expires")

    # A notification names the offer and the store, and leads to the promo.
    promo_id = promo_url.rsplit("/", 1)[1]
    accounts.fetch(
        "INSERT INTO notifications (user_id, promo_id, day) VALUES ($1, $2, current_date)",
        shopper.id,
        uuid.UUID(promo_id),
    )
    user_page.get_by_role("button", name="Menu").click()  # the phone's folded navigation
    user_page.get_by_role("link", name="Notifications").click()
    note = user_page.locator("#notifications li").first
    expect(note).to_contain_text(f"$0.99 instead of $4.50 at Harbour {tag}")
    note.get_by_role("link", name=f"See Coffee for a euro {tag}").click()
    expect(user_page).to_have_url(f"{server.url}/app/promos#promo-{promo_id}")
    expect(user_page.locator(f"#promo-{promo_id}")).to_have_class(re.compile("highlight"))

    # Cancel: the promo stops, and the shopper no longer sees it.
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Cancel promo").click()
    expect(page.locator("#promo-status")).to_have_text("cancelled")
    user_page.get_by_role("button", name="Show promos near me").click()
    expect(card).to_have_count(0)
