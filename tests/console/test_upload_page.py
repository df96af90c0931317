"""The upload form of a book: a file that is not text is refused on its field before anything
is sent; a re-upload that adds nothing says so plainly, not as a success; and when an upload
ends, keyboard focus is on its result."""

from __future__ import annotations

import re
import struct
import uuid
import zlib
from collections.abc import Callable

from playwright.sync_api import FilePayload, Page, Request, expect

from tests.console.conftest import Account, Accounts, LiveServer, sign_in


def _png() -> bytes:
    """A real PNG image of 2 by 2 pixels (what a slip of the file picker sends)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    pixels = b"".join(b"\x00" + b"\xff\x00\x00" * 2 for _ in range(2))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 2, 2, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(pixels))
        + chunk(b"IEND", b"")
    )


def _book(accounts: Accounts) -> uuid.UUID:
    book_id: uuid.UUID = accounts.fetch(
        "INSERT INTO books (name) VALUES ($1) RETURNING id", f"Upload {uuid.uuid4().hex[:8]}"
    )[0]["id"]
    return book_id


def _open(page: Page, server: LiveServer, admin: Account, book_id: uuid.UUID) -> None:
    """The book's page, once its script has drawn the book (and so handles the form)."""
    sign_in(page, server, admin, f"/admin/books/{book_id}")
    expect(page.locator("#book-name")).to_have_text(re.compile(r"^Upload "))


def _choose(page: Page, name: str, content: bytes, mime: str = "text/csv") -> None:
    upload: FilePayload = {"name": name, "mimeType": mime, "buffer": content}
    page.get_by_label("CSV file").set_input_files(files=[upload])


def test_a_png_named_csv_is_refused_on_the_field_before_it_is_sent(
    server: LiveServer, accounts: Accounts, new_page: Callable[..., Page]
) -> None:
    admin, book_id = accounts.create("admin"), _book(accounts)
    page = new_page()
    _open(page, server, admin, book_id)
    sent: list[str] = []

    def watch(request: Request) -> None:
        if request.method == "POST" and "/imports" in request.url:
            sent.append(request.url)

    page.on("request", watch)
    field = page.get_by_label("CSV file")
    for name, content, mime, said in [
        ("codes.csv", _png(), "text/csv", "This file is an image (PNG), not CSV text."),
        ("codes.xlsx", b"PK\x03\x04\x14\x00\x06\x00" + bytes(200), "", "spreadsheet"),
        ("codes.csv", "code\nA-1\n".encode("utf-16"), "text/csv", "UTF-16"),
    ]:
        _choose(page, name, content, mime)
        page.get_by_role("button", name="Upload", exact=True).click()
        expect(field).to_have_attribute("aria-invalid", "true")
        expect(field).to_have_accessible_description(re.compile(re.escape(said)))
        expect(field).to_be_focused()
        expect(page.locator("#upload-form .field-error")).to_have_count(1)
    assert not sent, sent
    expect(page.locator("#upload-progress")).to_be_hidden()
    expect(page.locator("#upload-result")).to_be_empty()
    # Nothing binary reached the page either.
    assert "PNG" not in page.locator("#upload-result").inner_text()

    # A text file goes through, and the earlier mark is gone.
    _choose(page, "codes.csv", b"code\nPNG-OK-1\n")
    expect(field).not_to_have_attribute("aria-invalid", "true")
    expect(page.locator("#upload-form .field-error")).to_have_count(0)
    page.get_by_role("button", name="Upload", exact=True).click()
    expect(page.locator("#upload-progress")).to_be_visible()
    expect(page.locator("#job")).to_be_visible()
    assert len(sent) == 1, sent


def test_a_reupload_that_adds_nothing_says_so_neutrally_and_focus_lands_on_the_result(
    server: LiveServer, accounts: Accounts, new_page: Callable[..., Page], import_worker: None
) -> None:
    admin, book_id = accounts.create("admin"), _book(accounts)
    page = new_page()
    _open(page, server, admin, book_id)
    tag = uuid.uuid4().hex[:8].upper()
    content = f"code\nR{tag}-1\nR{tag}-2\n".encode()
    result = page.locator("#upload-result")

    _choose(page, "codes.csv", content)
    page.get_by_role("button", name="Upload", exact=True).focus()
    page.keyboard.press("Enter")
    status = result.get_by_role("status")
    expect(status).to_have_text("2 codes added.", timeout=30_000)
    expect(status).to_have_class(re.compile(r"\bok\b"))
    # Focus follows the upload to its outcome, so the next Tab goes on from there.
    expect(status).to_be_focused()

    _choose(page, "codes.csv", content)
    page.get_by_role("button", name="Upload", exact=True).focus()
    page.keyboard.press("Enter")
    expect(status).to_have_text(
        "No codes added: the 2 codes in this file are already in this book.", timeout=30_000
    )
    expect(status).not_to_have_class(re.compile(r"\bok\b"))
    expect(status).to_be_focused()
    expect(result.get_by_role("table")).to_contain_text("2")

    # A refused file (a bad line) puts focus on the problem too.
    _choose(page, "codes.csv", b"code\nnot a code!\n")
    page.get_by_role("button", name="Upload", exact=True).focus()
    page.keyboard.press("Enter")
    alert = result.get_by_role("alert")
    expect(alert).to_be_visible(timeout=30_000)
    expect(alert).to_be_focused()
