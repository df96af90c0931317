"""Every console page, at desktop and phone size: axe-core finds no violation, nothing is
wider than the screen, no page takes focus on load, the favicon is served, and the phone's
menu folds away."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect

from tests.console.conftest import Account, Accounts, LiveServer, served_pages, shot

AXE = Path(__file__).resolve().parents[2] / "web/node_modules/axe-core/axe.min.js"
SIZES = {"desktop": (1280, 900), "phone": (390, 844)}


@pytest.fixture(scope="module")
def axe_source() -> str:
    assert AXE.exists(), "web/node_modules is missing: `make test` runs `npm ci` in web/"
    return AXE.read_text()


@pytest.fixture(scope="module")
def site(server: LiveServer, accounts: Accounts, browser: Browser) -> dict[str, Any]:
    """An admin, a shopper and one of everything, so every page has content to check."""
    admin, shopper = accounts.create("admin"), accounts.create("user")
    context = browser.new_context()
    page = context.new_page()
    _sign_in(page, server, admin)
    csrf = next(c["value"] for c in context.cookies() if c["name"] == "cf_csrf")

    def call(path: str, body: object) -> Any:
        response = page.request.post(
            f"{server.url}/api/v1{path}", data=body, headers={"X-CSRF-Token": csrf}
        )
        assert response.ok, response.text()
        return response.json()

    tag = uuid.uuid4().hex[:6]
    book = call("/books", {"name": f"Winter {tag}", "description": "Ten off boots"})
    call(f"/books/{book['id']}/codes/generate", {"count": 5})
    call(f"/books/{book['id']}/assign", {"user_id": str(shopper.id)})
    segment = call("/segments", {"name": f"Regulars {tag}", "kind": "static"})
    store = call("/stores", {"name": f"Corner {tag}", "lat": 48.85, "lng": 2.35})
    product = call(
        "/products",
        {"store_id": store["id"], "name": "Tea", "price_cents": 300, "currency": "USD"},
    )
    promo = call(
        "/promos",
        {
            "product_id": product["id"],
            "title": f"Tea for one {tag}",
            "promo_price_cents": 150,
            "quantity": 5,
            "starts_at": "2026-01-01T00:00:00Z",
            "ends_at": "2036-01-01T00:00:00Z",
            "radius_m": 5000,
        },
    )
    context.close()
    return {"admin": admin, "shopper": shopper, "book": book, "segment": segment, "promo": promo}


def _sign_in(page: Page, server: LiveServer, account: Account) -> None:
    page.goto(f"{server.url}/login")
    page.get_by_label("Email").fill(account.email)
    page.get_by_label("Password").fill(account.password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(lambda url: "/login" not in url)


@pytest.fixture(scope="module", params=list(SIZES))
def size(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def contexts(
    browser: Browser, server: LiveServer, site: dict[str, Any], size: str
) -> Iterator[dict[str, BrowserContext]]:
    """Signed-in contexts (the admin's, the shopper's, a signed-out one) at one size. The
    page's CSP is bypassed only so that axe can be injected."""
    width, height = SIZES[size]
    made = {}
    for who in ("admin", "shopper", "anonymous"):
        context = browser.new_context(viewport={"width": width, "height": height}, bypass_csp=True)
        context.set_default_timeout(15_000)
        if who != "anonymous":
            _sign_in(context.new_page(), server, site[who])
        made[who] = context
    yield made
    for context in made.values():
        context.close()


# Every page of the console, by route, with who sees it; the ids come from `site`.
PAGES: list[tuple[str, str]] = [
    ("anonymous", "/login"),
    ("anonymous", "/signup"),
    ("admin", "/admin"),
    ("admin", "/admin/books/{book_id}"),
    ("admin", "/admin/segments"),
    ("admin", "/admin/segments/{segment_id}"),
    ("admin", "/admin/stores"),
    ("admin", "/admin/promos"),
    ("admin", "/admin/promos/{promo_id}"),
    ("admin", "/admin/history"),
    ("admin", "/admin/audit"),
    ("admin", "/admin/dead-letters"),
    ("shopper", "/app"),
    ("shopper", "/app/promos"),
    ("shopper", "/app/history"),
    ("shopper", "/app/notifications"),
    ("shopper", "/admin"),  # the "admins only" page
]


def _pages(site: dict[str, Any]) -> list[tuple[str, str]]:
    ids = {
        "book_id": site["book"]["id"],
        "segment_id": site["segment"]["id"],
        "promo_id": site["promo"]["id"],
    }
    return [(who, route.format(**ids)) for who, route in PAGES]


def test_the_pages_checked_are_every_page_the_console_serves() -> None:
    """A page added to the console without a place in PAGES fails here."""
    served = served_pages()
    assert served == {route for _, route in PAGES}


def _ready(page: Page) -> None:
    """The page's scripts have drawn their content (no "Loading…" left)."""
    expect(page.get_by_role("heading", level=1)).to_be_visible()
    expect(page.get_by_text("Loading…", exact=True)).to_have_count(0)


AXE_RUN = (
    "axe.run(document, {resultTypes: ['violations']}).then(r => r.violations.map("
    "v => ({id: v.id, impact: v.impact, help: v.help,"
    " nodes: v.nodes.slice(0, 3).map(n => n.target.join(' '))})))"
)


def test_axe_finds_a_planted_violation(
    server: LiveServer, contexts: dict[str, BrowserContext], axe_source: str
) -> None:
    """The check below can fail: a button without a name is reported."""
    page = contexts["anonymous"].new_page()
    page.goto(f"{server.url}/login")
    page.evaluate("document.querySelector('main').append(document.createElement('button'))")
    page.evaluate(axe_source)
    assert "button-name" in {v["id"] for v in page.evaluate(AXE_RUN)}
    page.close()


def test_every_page_has_no_axe_violations_and_fits_the_screen(
    server: LiveServer,
    site: dict[str, Any],
    contexts: dict[str, BrowserContext],
    size: str,
    axe_source: str,
) -> None:
    width = SIZES[size][0]
    problems: list[str] = []
    for who, path in _pages(site):
        page = contexts[who].new_page()
        missing: list[str] = []
        page.on("response", lambda r, seen=missing: seen.append(r.url) if r.status == 404 else None)
        page.goto(f"{server.url}{path}")
        _ready(page)
        if path == f"/admin/books/{site['book']['id']}":
            expect(page.locator("#report canvas")).to_have_count(1)
        page.evaluate(axe_source)
        result = page.evaluate(AXE_RUN)
        for violation in result:
            problems.append(f"{size} {path}: {json.dumps(violation)}")
        # Only the sign-in forms put focus on their first field; no other page moves it.
        focused = page.evaluate(
            "document.activeElement === document.body ? null"
            " : document.activeElement.outerHTML.slice(0, 80)"
        )
        if who != "anonymous" and focused is not None:
            problems.append(f"{size} {path}: focus taken on load by {focused}")
        scroll = page.evaluate("document.documentElement.scrollWidth")
        if scroll > width:
            problems.append(f"{size} {path}: {scroll}px wide on a {width}px screen")
        if missing:
            problems.append(f"{size} {path}: 404 for {missing}")
        if size == "phone" and path in ("/admin", "/app"):
            shot(page, f"phone-{path.strip('/').replace('/', '-')}", full_page=False)
        page.close()
    assert not problems, "\n".join(problems)


def test_the_phone_menu_folds_and_opens_by_keyboard(
    server: LiveServer, contexts: dict[str, BrowserContext], size: str
) -> None:
    page = contexts["admin"].new_page()
    page.goto(f"{server.url}/admin")
    menu = page.get_by_role("button", name="Menu")
    books = page.get_by_role("navigation", name="Campaigns").get_by_role("link", name="Books")
    shopper = page.get_by_role("navigation", name="Shopper view")
    if size == "desktop":
        expect(menu).to_be_hidden()
        expect(books).to_be_visible()
        expect(shopper.get_by_role("link", name="My codes")).to_be_visible()
    else:
        expect(books).to_be_hidden()
        header = page.locator("header").bounding_box()
        assert header is not None and header["height"] < 80, header
        menu.focus()
        page.keyboard.press("Enter")
        expect(menu).to_have_attribute("aria-expanded", "true")
        expect(books).to_be_visible()
        shot(page, "phone-menu", full_page=False)
        page.keyboard.press("Tab")
        page.keyboard.press("Escape")
        expect(books).to_be_hidden()
        expect(menu).to_be_focused()
    page.close()
