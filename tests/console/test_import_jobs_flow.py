"""The console's upload page follows an import job: it shows the job waiting its turn and
cancels it with nothing stored — in headless Chromium against a running service and a real
worker process."""

from __future__ import annotations

import asyncio
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import asyncpg
from playwright.sync_api import FilePayload, Page, expect

from app.core.locking import LockNamespace, xact_lock_sql
from tests.console.conftest import Accounts, LiveServer, sign_in
from tests.helpers import wait_until


@contextmanager
def import_lock_held(url: str, book_id: uuid.UUID) -> Iterator[None]:
    """Hold the book's import lock (as a running import does) until the block ends."""
    taken, release = threading.Event(), threading.Event()
    failures: list[BaseException] = []

    async def hold() -> None:
        conn = await asyncpg.connect(url, statement_cache_size=0)
        try:
            async with conn.transaction():
                key = xact_lock_sql(LockNamespace.IMPORT_BOOK, "$1::text")
                await conn.execute(f"SELECT {key}", str(book_id))
                taken.set()
                await asyncio.to_thread(release.wait)
        finally:
            await conn.close()

    def run() -> None:
        try:
            asyncio.run(hold())
        except BaseException as exc:  # reported to the test below
            failures.append(exc)
            taken.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert taken.wait(30) and not failures, failures
    try:
        yield
    finally:
        release.set()
        thread.join(30)


def test_admin_cancels_an_import_waiting_its_turn(
    server: LiveServer, accounts: Accounts, new_page: Callable[..., Page], import_worker: None
) -> None:
    admin = accounts.create("admin")
    book_id: uuid.UUID = accounts.fetch(
        "INSERT INTO books (name) VALUES ($1) RETURNING id", f"jobs-{uuid.uuid4().hex[:8]}"
    )[0]["id"]
    page = new_page()
    sign_in(page, server, admin, f"/admin/books/{book_id}")
    # The page's script has run (it names the book) before the form is used.
    expect(page.locator("#book-name")).to_have_text(re.compile(r"^jobs-"))
    with import_lock_held(accounts.url, book_id):
        upload: FilePayload = {"name": "codes.csv", "mimeType": "text/csv", "buffer": b"C-1\nC-2\n"}
        page.get_by_label("CSV file").set_input_files(files=[upload])
        page.get_by_role("button", name="Upload", exact=True).click()
        label = page.locator("#job-label")
        expect(label).to_contain_text(
            "Waiting for another import of this book to finish", timeout=30_000
        )
        page.get_by_role("button", name="Cancel import").click()
        expect(page.locator("#upload-result").get_by_role("status")).to_have_text(
            "Import cancelled; nothing stored."
        )
        expect(label).to_have_text("Import cancelled.")
        expect(page.get_by_role("button", name="Cancel import")).to_be_hidden()
    job = accounts.fetch("SELECT id, state FROM import_jobs WHERE book_id = $1", book_id)
    assert [r["state"] for r in job] == ["cancelled"]
    staging = f"import_staging_{job[0]['id'].hex}"
    # The worker takes the job again once the lock is free, and drops its staging table.
    wait_until(
        lambda: accounts.fetch("SELECT to_regclass($1) IS NULL AS gone", staging)[0]["gone"],
        what="staging dropped",
    )
    assert (
        accounts.fetch("SELECT count(*) AS n FROM codes WHERE book_id = $1", book_id)[0]["n"] == 0
    )
