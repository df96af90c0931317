"""Background refresh and an ended session leave the page as it is: focus stays on its control,
the stats are not re-announced, and what was typed survives an ended session."""

from __future__ import annotations

from collections.abc import Callable

from playwright.sync_api import Page, expect

from app.core.security import SESSION_COOKIE
from tests.console.conftest import PASSWORD, Accounts, LiveServer, sign_in


def test_an_ended_session_keeps_the_form_and_offers_to_sign_in_again(
    server: LiveServer, accounts: Accounts, new_page: Callable[..., Page]
) -> None:
    user = accounts.create("user")
    page = new_page()
    sign_in(page, server, user, "/app")
    page.get_by_label("Order reference").fill("ORDER-77")
    page.get_by_label("Or a specific code you were given").fill("NO-SUCH-CODE")
    page.context.clear_cookies(name=SESSION_COOKIE)

    page.get_by_role("button", name="Claim this code").click()
    banner = page.locator("#session-ended")
    expect(banner).to_contain_text("Your session has ended. What you typed is still here.")
    expect(page).to_have_url(f"{server.url}/app")
    expect(page.get_by_label("Order reference")).to_have_value("ORDER-77")
    expect(page.get_by_label("Or a specific code you were given")).to_have_value("NO-SUCH-CODE")

    # Signing in again in a new tab (same browser, same cookies), then retrying here.
    with page.context.expect_page() as opened:
        banner.get_by_role("link", name="Sign in again in a new tab").click()
    login = opened.value
    login.get_by_label("Email").fill(user.email)
    login.get_by_label("Password").fill(PASSWORD)
    login.get_by_role("button", name="Sign in").click()
    expect(login).to_have_url(f"{server.url}/app")
    page.get_by_role("button", name="Claim this code").click()
    expect(page.locator("#claim-code-form").get_by_role("alert")).to_be_visible()
    expect(banner).to_have_count(0)
    expect(page.get_by_label("Order reference")).to_have_value("ORDER-77")


def test_a_refresh_keeps_focus_and_the_stats_are_not_a_live_region(
    server: LiveServer, accounts: Accounts, new_page: Callable[..., Page]
) -> None:
    admin, user = accounts.create("admin"), accounts.create("user")
    page = new_page()
    sign_in(page, server, admin, "/admin")
    csrf = next(c["value"] for c in page.context.cookies() if c["name"] == "cf_csrf")
    headers = {"X-CSRF-Token": csrf}
    book = page.request.post(
        f"{server.url}/api/v1/books", data={"name": "Focus"}, headers=headers
    ).json()
    page.request.post(
        f"{server.url}/api/v1/books/{book['id']}/codes/generate", data={"count": 1}, headers=headers
    )
    code = page.request.post(
        f"{server.url}/api/v1/books/{book['id']}/assign",
        data={"user_id": str(user.id)},
        headers=headers,
    ).json()["code"]
    # The book's stats tiles are rebuilt every few seconds: not announced each time.
    page.goto(f"{server.url}/admin/books/{book['id']}")
    expect(page.locator('#stats [data-stat="assigned"] dd')).to_have_text("1")
    assert page.locator("#stats").get_attribute("aria-live") is None

    shopper = new_page()
    sign_in(shopper, server, user, "/app")
    lock = shopper.get_by_role("button", name=f"Lock {code}")
    lock.focus()
    shopper.evaluate("document.querySelector('#my-codes table').dataset.old = 'yes'")
    # The page refreshes when it becomes visible again, as on its timer: the table is new.
    shopper.evaluate("document.dispatchEvent(new Event('visibilitychange'))")
    expect(shopper.locator("#my-codes table[data-old]")).to_have_count(0)
    expect(shopper.get_by_role("button", name=f"Lock {code}")).to_be_focused()
