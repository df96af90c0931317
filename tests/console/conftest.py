"""Browser tests of the web console: a real uvicorn server on a free port against the test
database, driven by Debian's Chromium through Playwright."""

from __future__ import annotations

import asyncio
import os
import tempfile
import uuid
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import pytest
from fastapi.responses import HTMLResponse
from fastapi.routing import APIRoute
from playwright.sync_api import Browser, Locator, Page, expect, sync_playwright
from pwdlib import PasswordHash

from app.console.router import router as console_router
from app.core.db import libpq_url
from app.core.settings import Settings
from tests.live_server import LiveServer

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
# Screenshots go to a scratch folder; `UPDATE_SCREENSHOTS=1` refreshes the README's images.
SCREENSHOTS = (
    Path(__file__).resolve().parents[2] / "docs" / "screenshots"
    if os.environ.get("UPDATE_SCREENSHOTS") == "1"
    else Path(tempfile.gettempdir()) / "couponflash-screenshots"
)
PASSWORD = "console-password-1"
T = TypeVar("T")


@dataclass
class Account:
    id: uuid.UUID
    email: str
    password: str = PASSWORD


@pytest.fixture(scope="package")
def chromium_path() -> str:
    # Missing Chromium fails the console tests: they are part of `make test`, not optional.
    assert Path(CHROMIUM).exists(), (
        f"No Chromium at {CHROMIUM}: install Debian's `chromium` package (`.ci/run` does)"
        " or set CHROMIUM_PATH."
    )
    return CHROMIUM


@pytest.fixture(scope="package")
def server(settings: Settings, chromium_path: str) -> Iterator[LiveServer]:
    with LiveServer(settings) as live:
        yield live


@pytest.fixture(scope="package")
def browser(chromium_path: str) -> Iterator[Browser]:
    with sync_playwright() as pw:
        instance = pw.chromium.launch(
            executable_path=chromium_path,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        yield instance
        instance.close()


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    # Playwright's sync API keeps an event loop running in the test's thread.
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


class Accounts:
    """Creates committed users with a real password hash, straight in the database."""

    _hash = PasswordHash.recommended().hash(PASSWORD)

    def __init__(self, database_url: str) -> None:
        self.url = libpq_url(database_url)

    def create(self, role: str = "user") -> Account:
        email = f"console-{role}-{uuid.uuid4().hex[:10]}@example.com"

        async def insert() -> uuid.UUID:
            conn = await asyncpg.connect(self.url, statement_cache_size=0)
            try:
                user_id: uuid.UUID = await conn.fetchval(
                    "INSERT INTO users (email, password_hash, role) VALUES ($1, $2, $3) "
                    "RETURNING id",
                    email,
                    self._hash,
                    role,
                )
                return user_id
            finally:
                await conn.close()

        return Account(run_async(insert()), email)

    def fetch(self, sql: str, *args: object) -> list[asyncpg.Record]:
        """Run one committed statement (test set-up that has no console page)."""

        async def run() -> list[asyncpg.Record]:
            conn = await asyncpg.connect(self.url, statement_cache_size=0)
            try:
                return list(await conn.fetch(sql, *args))
            finally:
                await conn.close()

        return run_async(run())


@pytest.fixture
def import_worker(settings: Settings) -> Iterator[None]:
    """A real worker process (`python -m app worker`) to run the console's import jobs,
    for one test only: other tests leave outbox jobs of their own as they are."""
    from bench.common import stop
    from tests.notifications.conftest import spawn_worker

    proc = spawn_worker(settings)
    yield
    stop(proc, 20)


@pytest.fixture(scope="package")
def accounts(settings: Settings) -> Accounts:
    return Accounts(settings.database_url or "")


def shot(page: Page | Locator, name: str, *, full_page: bool = True) -> None:
    """Save a screenshot for the README: of the page, or of one part of it."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = str(SCREENSHOTS / f"{name}.png")
    if isinstance(page, Locator):
        page.screenshot(path=path)
    else:
        page.screenshot(path=path, full_page=full_page)


@pytest.fixture
def new_page(browser: Browser) -> Iterator[Callable[..., Page]]:
    """Pages in fresh browser contexts (separate cookie jars), closed after the test."""
    contexts = []
    errors: list[str] = []

    def make(width: int = 1280, height: int = 900) -> Page:
        context = browser.new_context(viewport={"width": width, "height": height})
        context.set_default_timeout(15_000)
        contexts.append(context)
        page = context.new_page()
        page.on("pageerror", lambda exc: errors.append(f"{page.url}: {exc}"))
        page.on(
            "console",
            lambda msg: (
                errors.append(f"{page.url}: {msg.text}")
                if msg.type == "error" and not msg.text.startswith("Failed to load resource")
                else None
            ),
        )
        return page

    yield make
    for context in contexts:
        context.close()
    # Script errors and refused content (the pages run under a strict CSP) fail the test.
    assert not errors, "\n".join(errors)


def sign_in(page: Page, server: LiveServer, account: Account, path: str = "/admin") -> None:
    page.goto(f"{server.url}{path}")
    expect(page).to_have_url(f"{server.url}/login?next={path}")
    page.get_by_label("Email").fill(account.email)
    page.get_by_label("Password").fill(account.password)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(f"{server.url}{path}")
    # The page's module scripts have run (their handlers are attached) once the DOM is loaded.
    page.wait_for_load_state("domcontentloaded")


def served_pages() -> set[str]:
    """Every page path the console serves (its GET routes that answer HTML)."""
    return {
        route.path
        for route in console_router.routes
        if isinstance(route, APIRoute)
        and "GET" in route.methods
        and route.response_class is HTMLResponse
    }
