"""Find a code (the support tool on a book's page): as wide as the page, its Roll back button
on the screen after a search without scrolling (down or sideways) on a desktop and on a
phone, and the reason asked in the page, never in a browser prompt."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from playwright.sync_api import Dialog, Page, expect

from tests.console.conftest import Accounts, LiveServer, shot, sign_in

SIZES = {"desktop": (1280, 800), "phone": (390, 844)}


def _redeemed_code(page: Page, server: LiveServer, user_id: uuid.UUID) -> tuple[str, str]:
    """A book with one code, assigned to the user and redeemed (set up through the API)."""
    csrf = next(c["value"] for c in page.context.cookies() if c["name"] == "cf_csrf")

    def call(path: str, body: object) -> Any:
        response = page.request.post(
            f"{server.url}/api/v1{path}", data=body, headers={"X-CSRF-Token": csrf}
        )
        assert response.ok, response.text()
        return response.json()

    book = call("/books", {"name": f"Support {uuid.uuid4().hex[:6]}"})
    call(f"/books/{book['id']}/codes/generate", {"count": 1, "length": 12})
    code = call(f"/books/{book['id']}/assign", {"user_id": str(user_id)})["code"]
    call(f"/codes/{code}/redeem", {"order_ref": "ORDER-7"})
    return book["id"], code


@pytest.mark.parametrize("size", list(SIZES))
def test_find_a_code_is_full_width_with_roll_back_in_view_and_an_in_page_reason(
    server: LiveServer, accounts: Accounts, new_page: Callable[..., Page], size: str
) -> None:
    admin, shopper = accounts.create("admin"), accounts.create("user")
    width, height = SIZES[size]
    page = new_page(width, height)
    dialogs: list[str] = []

    def refuse(dialog: Dialog) -> None:
        dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()

    page.on("dialog", refuse)
    sign_in(page, server, admin)
    book_id, code = _redeemed_code(page, server, shopper.id)
    page.goto(f"{server.url}/admin/books/{book_id}")
    expect(page.locator("#book-name")).to_have_text(re.compile(r"^Support "))

    finder = page.locator("section", has=page.get_by_role("heading", name="Find a code"))
    codes = page.locator("section", has=page.get_by_role("heading", name="Codes", exact=True))
    finder.get_by_label("Code", exact=True).fill(code.lower())
    finder.get_by_role("button", name="Find").click()
    roll_back = finder.get_by_role("button", name="Roll back")
    expect(roll_back).to_be_visible()
    expect(finder).to_contain_text(shopper.email)
    # On the screen as the search left it: nobody has to scroll down to reach it.
    expect(roll_back).to_be_in_viewport(ratio=1)

    # As wide as the page's other full-width sections, not a card in a column.
    finder_box, codes_box = finder.bounding_box(), codes.bounding_box()
    assert finder_box is not None and codes_box is not None
    assert abs(finder_box["width"] - codes_box["width"]) < 2, (finder_box, codes_box)

    # Nothing in it scrolls sideways, and the button is on the screen as the page is.
    geometry = roll_back.evaluate(
        """button => {
          const box = button.getBoundingClientRect();
          const section = button.closest("section");
          const wide = [...section.querySelectorAll(".scroll")]
            .filter(s => s.scrollWidth > s.clientWidth + 1)
            .map(s => `${s.scrollWidth} > ${s.clientWidth}`);
          return {left: box.left, right: box.right, wide,
                  page: document.documentElement.scrollWidth};
        }"""
    )
    assert geometry["wide"] == [], geometry
    assert geometry["left"] >= 0 and geometry["right"] <= width, geometry
    assert geometry["page"] <= width, geometry

    # The reason is a field in the page; focus goes to it, and back to the search after.
    roll_back.click()
    reason = finder.get_by_label("Reason for the rollback")
    expect(reason).to_be_focused()
    reason.fill("payment failed")
    if size == "desktop":
        shot(finder, "admin-find-code")
    finder.get_by_role("button", name="Confirm roll back").click()
    expect(finder).to_contain_text("rolled_back")
    expect(finder.get_by_label("Code", exact=True)).to_be_focused()
    assert dialogs == [], dialogs
    rolled = accounts.fetch(
        "SELECT details->>'reason' AS reason FROM redemption_history "
        "WHERE action = 'rolled_back' AND book_id = $1",
        uuid.UUID(book_id),
    )
    assert [r["reason"] for r in rolled] == ["payment failed"]
