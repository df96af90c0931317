"""A campaign manager with only a keyboard: create a book, generate codes, preview and confirm
a distribution; focus lands where the next step is."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable

from playwright.sync_api import Locator, Page, expect

from tests.console.conftest import Accounts, LiveServer, sign_in


def _tab_to(page: Page, target: Locator, limit: int = 60) -> None:
    """Press Tab until `target` has focus (fails after `limit` presses)."""
    for _ in range(limit):
        if target.evaluate("node => node === document.activeElement"):
            return
        page.keyboard.press("Tab")
    raise AssertionError(f"{target} not reached with Tab")


def test_campaign_manager_runs_a_distribution_by_keyboard(
    server: LiveServer, accounts: Accounts, new_page: Callable[..., Page]
) -> None:
    admin, member = accounts.create("admin"), accounts.create("user")
    tag = uuid.uuid4().hex[:6]
    segment = accounts.fetch(
        "INSERT INTO segments (name, kind) VALUES ($1, 'static') RETURNING id", f"Keys {tag}"
    )[0]["id"]
    accounts.fetch(
        "INSERT INTO segment_members (segment_id, user_id) VALUES ($1, $2)", segment, member.id
    )
    page = new_page()
    sign_in(page, server, admin)

    form = page.locator("#book-form")
    _tab_to(page, form.get_by_label("Name"))
    page.keyboard.type(f"Keys {tag}")
    _tab_to(page, form.get_by_role("button", name="Create book"))
    page.keyboard.press("Enter")
    expect(page).to_have_url(re.compile(r"/admin/books/[0-9a-f-]{36}$"))

    generate = page.locator("#generate-form")
    _tab_to(page, generate.get_by_label("How many"))
    page.keyboard.press("Control+a")
    page.keyboard.type("5")
    _tab_to(page, generate.get_by_role("button", name=re.compile("Generate")))
    page.keyboard.press("Enter")
    expect(page.locator('[data-stat="unassigned"] dd')).to_have_text("5")

    segment_select = page.locator("#dist-segment")
    expect(segment_select.locator("option", has_text=f"Keys {tag}")).to_have_count(1)
    _tab_to(page, segment_select)
    # The one step not typed: choosing the option (the select itself is reached by Tab).
    segment_select.select_option(label=f"Keys {tag} (static)")
    _tab_to(page, page.get_by_role("button", name="Preview distribution"))
    page.keyboard.press("Enter")
    confirm = page.locator("#distribute-confirm")
    expect(confirm).to_be_focused()
    expect(page.locator("#dist-summary")).to_have_text("1 person: 1 will get a code.")
    _tab_to(page, confirm.get_by_role("button", name="Distribute 1 code"))
    page.keyboard.press("Enter")
    expect(page.locator("#distribute-result p")).to_be_focused()
    expect(page.locator("#distribute-result")).to_contain_text("1 code assigned.")
