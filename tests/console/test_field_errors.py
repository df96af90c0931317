"""Problems land on the field they belong to, in plain words, once, and go on the next try."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable

from playwright.sync_api import Page, expect

from tests.console.conftest import Accounts, LiveServer, sign_in


def test_book_form_errors_are_on_their_fields_and_cleared_on_retry(
    server: LiveServer, accounts: Accounts, new_page: Callable[..., Page]
) -> None:
    admin = accounts.create("admin")
    page = new_page()
    sign_in(page, server, admin)
    form = page.locator("#book-form")
    form.get_by_label("Name").fill(f"Window {uuid.uuid4().hex[:8]}")
    starts, expires = form.get_by_label("Starts"), form.get_by_label("Expires")
    starts.fill("2031-05-02T10:00")
    expires.fill("2031-05-01T10:00")
    form.get_by_role("button", name="Create book").click()

    # The server's 422 names `starts_at`: the message sits on Starts, linked and plain.
    expect(starts).to_have_attribute("aria-invalid", "true")
    expect(starts).to_be_focused()
    note_id = starts.get_attribute("aria-describedby") or ""
    note = page.locator(f"#{note_id}")
    expect(note).to_have_text(re.compile(r"^(“Starts” )?[Mm]ust be before “Expires”\.$"))
    expect(form.get_by_role("alert")).to_have_text("Please check this field: Starts.")
    text = form.inner_text()
    assert "Value error" not in text and "starts_at" not in text and "body" not in text
    assert text.count("must be before") == 1, text
    expect(expires).not_to_have_attribute("aria-invalid", "true")

    # Metadata that is not an object is refused on its field before anything is sent.
    expires.fill("2031-05-03T10:00")
    form.get_by_label("Metadata").fill("[1, 2]")
    form.get_by_role("button", name="Create book").click()
    metadata = form.get_by_label("Metadata")
    expect(metadata).to_have_attribute("aria-invalid", "true")
    expect(metadata).to_have_accessible_description(re.compile("must be a JSON object"))
    # The earlier attempt's mark and message are gone.
    expect(starts).not_to_have_attribute("aria-invalid", "true")
    expect(form.locator(".field-error")).to_have_count(1)

    # Fixed: the book is created.
    metadata.fill('{"campaign": "spring"}')
    form.get_by_role("button", name="Create book").click()
    expect(page).to_have_url(re.compile(r"/admin/books/[0-9a-f-]{36}$"))
