"""A shopper's codes carry their campaign: name, description and end first, the id second;
a paused campaign's codes offer no Lock or Redeem and say why."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from playwright.sync_api import Page, expect

from tests.console.conftest import Account, Accounts, LiveServer, sign_in


def _admin_api(page: Page, server: LiveServer) -> Callable[..., Any]:
    csrf = next(c["value"] for c in page.context.cookies() if c["name"] == "cf_csrf")

    def call(method: str, path: str, data: object = None) -> Any:
        response = page.request.fetch(
            f"{server.url}/api/v1{path}",
            method=method,
            data=data,
            headers={"X-CSRF-Token": csrf},
        )
        assert response.ok, response.text()
        return response.json()

    return call


def _book_with_code_for(call: Callable[..., Any], user: Account, **settings: Any) -> dict[str, Any]:
    book = call("POST", "/books", {"name": f"Campaign {uuid.uuid4().hex[:8]}", **settings})
    call("POST", f"/books/{book['id']}/codes/generate", {"count": 2})
    call("POST", f"/books/{book['id']}/assign", {"user_id": str(user.id)})
    return dict(book)


def test_a_paused_campaign_says_why_its_codes_cannot_be_used(
    server: LiveServer, accounts: Accounts, new_page: Callable[..., Page]
) -> None:
    admin, shopper = accounts.create("admin"), accounts.create("user")
    admin_page = new_page()
    sign_in(admin_page, server, admin, "/admin")
    call = _admin_api(admin_page, server)
    running = _book_with_code_for(call, shopper, description="Five off shoes")
    paused = _book_with_code_for(call, shopper)
    call("PATCH", f"/books/{paused['id']}", {"status": "paused"})

    page = new_page(390, 844)
    sign_in(page, server, shopper, "/app")
    open_group = page.locator(f'.campaign[data-book="{running["id"]}"]')
    expect(open_group.get_by_role("heading", name=running["name"])).to_be_visible()
    expect(open_group).to_contain_text("Five off shoes")
    expect(open_group).to_contain_text("No end date")
    open_codes = page.locator(f'table[data-book="{running["id"]}"]')
    expect(open_codes.get_by_role("button", name="Lock")).to_have_count(1)
    expect(open_codes.get_by_role("button", name="Redeem")).to_have_count(1)

    closed_group = page.locator(f'.campaign[data-book="{paused["id"]}"]')
    expect(closed_group.locator("[data-closed]")).to_have_text(
        "This campaign is paused: its codes cannot be used for now."
    )
    closed_codes = page.locator(f'table[data-book="{paused["id"]}"]')
    expect(closed_codes).to_contain_text("Not usable now")
    expect(closed_codes.get_by_role("button")).to_have_count(0)
    # A paused campaign is not offered for claiming either.
    options = page.get_by_label("Campaign", exact=True).locator("option")
    expect(options.filter(has_text=running["name"])).to_have_count(1)
    expect(options.filter(has_text=paused["name"])).to_have_count(0)

    # The campaign id is second, with a copy button that puts the whole id on the clipboard.
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    open_group.get_by_role("button", name=f"Copy campaign id {running['id']}").click()
    expect(open_group.get_by_role("button", name=f"Copy campaign id {running['id']}")).to_have_text(
        "Copied"
    )
    assert page.evaluate("navigator.clipboard.readText()") == running["id"]

    # Resumed, its codes can be used again after the next refresh.
    call("PATCH", f"/books/{paused['id']}", {"status": "active"})
    page.reload()
    expect(closed_codes.get_by_role("button", name="Lock")).to_have_count(1)
    expect(page.locator(f'.campaign[data-book="{paused["id"]}"] [data-closed]')).to_have_count(0)
