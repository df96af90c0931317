"""A campaign manager with only a keyboard (Tab, Enter, Space and typing; never a mouse): sign
in, create a book, upload its codes, generate more, preview and confirm a distribution, read
the report. After every action focus is shown and sits where the next step starts."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable

import pytest
from playwright.sync_api import Page, expect

from tests.console.conftest import Account, Accounts, LiveServer
from tests.console.keys import assert_focus_shown, choose, open_file_picker, tab_to

SIZES = {"desktop": (1280, 900), "phone": (390, 844)}


def keyboard_sign_in(page: Page, server: LiveServer, account: Account, path: str) -> None:
    page.goto(f"{server.url}{path}")
    expect(page).to_have_url(re.compile(r"/login\?next="))
    tab_to(page, page.get_by_label("Email"))
    page.keyboard.type(account.email)
    tab_to(page, page.get_by_label("Password"))
    page.keyboard.type(account.password)
    page.keyboard.press("Enter")
    expect(page).to_have_url(f"{server.url}{path}")


@pytest.mark.parametrize("size", list(SIZES))
def test_campaign_manager_runs_a_campaign_by_keyboard(
    server: LiveServer,
    accounts: Accounts,
    new_page: Callable[..., Page],
    import_worker: None,
    size: str,
) -> None:
    admin, member = accounts.create("admin"), accounts.create("user")
    tag = uuid.uuid4().hex[:6]
    segment = accounts.fetch(
        "INSERT INTO segments (name, kind) VALUES ($1, 'static') RETURNING id", f"Keys {tag}"
    )[0]["id"]
    accounts.fetch(
        "INSERT INTO segment_members (segment_id, user_id) VALUES ($1, $2)", segment, member.id
    )
    page = new_page(*SIZES[size])
    keyboard_sign_in(page, server, admin, "/admin")
    expect(page.locator("#books")).not_to_contain_text("Loading…")  # the page's script runs

    # Create a book.
    form = page.locator("#book-form")
    tab_to(page, form.get_by_label("Name"))
    page.keyboard.type(f"Keys {tag}")
    tab_to(page, form.get_by_role("button", name="Create book"))
    page.keyboard.press("Enter")
    expect(page).to_have_url(re.compile(r"/admin/books/[0-9a-f-]{36}$"))
    expect(page.locator("#book-name")).to_have_text(f"Keys {tag}")

    # Upload: Space on the file field opens the picker; Enter on Upload sends the file.
    upload = page.locator("#upload-form")
    chooser = open_file_picker(page, upload.get_by_label("CSV file"))
    codes = "".join(f"K{tag.upper()}-{i}\n" for i in range(5))
    chooser.set_files(
        files=[{"name": "codes.csv", "mimeType": "text/csv", "buffer": codes.encode()}]
    )
    tab_to(page, upload.get_by_role("button", name="Upload", exact=True))
    page.keyboard.press("Enter")
    outcome = page.locator("#upload-result").get_by_role("status")
    expect(outcome).to_have_text("5 codes added.", timeout=30_000)
    expect(outcome).to_be_focused()
    assert_focus_shown(page)
    expect(page.locator('[data-stat="unassigned"] dd')).to_have_text("5")

    # Generate five more with Enter on the button: focus stays on it, ready for another go.
    generate = page.locator("#generate-form")
    tab_to(page, generate.get_by_label("How many"))
    page.keyboard.press("Control+a")
    page.keyboard.type("5")
    tab_to(page, generate.get_by_role("button", name="Generate"))
    page.keyboard.press("Enter")
    expect(page.locator("#generate-result")).to_have_text("5 codes generated.")
    expect(generate.get_by_role("button", name="Generate")).to_be_focused()
    assert_focus_shown(page)
    expect(page.locator('[data-stat="unassigned"] dd')).to_have_text("10")

    # Distribute: choose the segment by typing its name, preview, confirm.
    segment_select = page.locator("#dist-segment")
    expect(segment_select.locator("option", has_text=f"Keys {tag}")).to_have_count(1)
    choose(page, segment_select, f"Keys {tag}")
    tab_to(page, page.get_by_role("button", name="Preview distribution"))
    page.keyboard.press("Enter")
    confirm = page.locator("#distribute-confirm")
    expect(confirm).to_be_focused()
    assert_focus_shown(page)
    expect(page.locator("#dist-summary")).to_have_text("1 person: 1 will get a code.")
    tab_to(page, confirm.get_by_role("button", name="Distribute 1 code"))
    page.keyboard.press("Enter")
    result = page.locator("#distribute-result p")
    expect(result).to_have_text("1 code assigned.")
    expect(result).to_be_focused()
    assert_focus_shown(page)

    # The report: its numbers as a table, then by hour.
    report = page.locator("#report")
    expect(report).to_have_attribute("data-summary", re.compile(r"Assigned 1, Locked 0"))
    tab_to(page, report.get_by_text("Show the numbers as a table"))
    page.keyboard.press("Enter")
    numbers = report.get_by_role("table")
    expect(numbers).to_be_visible()
    expect(numbers.locator("tbody td").first).to_have_text("1")
    tab_to(page, page.get_by_label("Period"))
    page.keyboard.press("ArrowDown")
    expect(page.get_by_label("Period")).to_have_value("hour")
    expect(report).to_have_attribute("data-summary", re.compile(r"\d+ hours: Assigned 1"))
    expect(page.get_by_label("Period")).to_be_focused()
