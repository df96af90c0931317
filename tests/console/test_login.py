"""Signing in to the console: cookies, CSRF, roles, sign-out."""

from __future__ import annotations

from collections.abc import Callable

import httpx
from playwright.sync_api import Page, expect

from app.core.settings import Settings
from app.main import create_app
from tests.console.conftest import Accounts, LiveServer, run_async, shot
from tests.helpers import started


def test_admin_signs_in_with_httponly_strict_cookie_and_signs_out(
    server: LiveServer, accounts: Accounts, new_page: Callable[..., Page]
) -> None:
    admin = accounts.create("admin")
    page = new_page()
    page.goto(f"{server.url}/admin")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    shot(page, "login")
    page.get_by_label("Email").fill(admin.email)
    page.get_by_label("Password").fill("wrong-password")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_have_text("Email or password is wrong.")
    # The email typed is kept; the password field is next, marked and focused.
    expect(page.get_by_label("Email")).to_have_value(admin.email)
    expect(page.get_by_label("Password")).to_be_focused()
    expect(page.get_by_label("Password")).to_have_attribute("aria-invalid", "true")
    expect(page.get_by_text("Coupon books and flash promos")).to_be_visible()

    page.get_by_label("Password").fill(admin.password)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(f"{server.url}/admin")
    expect(page.get_by_role("heading", name="Books", level=1)).to_be_visible()
    cookies = {c["name"]: c for c in page.context.cookies()}
    assert cookies["cf_session"]["httpOnly"] is True
    assert cookies["cf_session"]["sameSite"] == "Strict"
    assert cookies["cf_csrf"]["httpOnly"] is False

    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(f"{server.url}/login")
    page.goto(f"{server.url}/admin")
    expect(page).to_have_url(f"{server.url}/login?next=/admin")


def test_user_is_refused_admin_pages_but_sees_own_pages(
    server: LiveServer, accounts: Accounts, new_page: Callable[..., Page]
) -> None:
    user = accounts.create("user")
    page = new_page()
    page.goto(f"{server.url}/app")
    # Keyboard only: the email field has focus, Tab to the password, Enter submits.
    expect(page.locator("input[name=email]")).to_be_focused()
    page.keyboard.type(user.email)
    page.keyboard.press("Tab")
    page.keyboard.type(user.password)
    page.keyboard.press("Enter")
    expect(page).to_have_url(f"{server.url}/app")
    expect(page.get_by_role("heading", name="My codes", level=1)).to_be_visible()
    expect(page.get_by_role("link", name="Books")).to_have_count(0)
    response = page.goto(f"{server.url}/admin")
    assert response is not None and response.status == 403
    expect(page.get_by_role("heading", name="Admins only")).to_be_visible()


def test_login_form_without_its_csrf_token_is_refused(
    server: LiveServer, accounts: Accounts
) -> None:
    user = accounts.create("user")
    with httpx.Client(base_url=server.url) as client:
        form = client.get("/login")
        assert "script-src 'self'" in form.headers["content-security-policy"]
        response = client.post(
            "/login", data={"email": user.email, "password": user.password, "csrf_token": "x"}
        )
        assert response.status_code == 403
        assert "cf_session" not in response.cookies
        token = client.cookies["cf_csrf"]
        response = client.post(
            "/login",
            data={"email": user.email, "password": user.password, "csrf_token": token},
        )
        assert response.status_code == 303
        assert response.headers["location"] == "/app"
        assert "cf_session" in response.cookies


def test_api_call_with_session_cookie_needs_the_csrf_header(
    server: LiveServer, accounts: Accounts
) -> None:
    user = accounts.create("user")
    with httpx.Client(base_url=server.url) as client:
        client.get("/login")
        client.post(
            "/login",
            data={
                "email": user.email,
                "password": user.password,
                "csrf_token": client.cookies["cf_csrf"],
            },
        )
        assert client.get("/api/v1/auth/me").json()["email"] == user.email
        body = {"lat": 40.4, "lng": -3.7}
        assert client.put("/api/v1/me/location", json=body).status_code == 403
        headers = {"X-CSRF-Token": client.cookies["cf_csrf"]}
        assert client.put("/api/v1/me/location", json=body, headers=headers).status_code == 200


def test_login_next_is_never_an_open_redirect(server: LiveServer, accounts: Accounts) -> None:
    user = accounts.create("user")
    with httpx.Client(base_url=server.url) as client:
        client.get("/login")
        response = client.post(
            "/login",
            data={
                "email": user.email,
                "password": user.password,
                "csrf_token": client.cookies["cf_csrf"],
                "next": "//evil.example/x",
            },
        )
        assert response.headers["location"] == "/app"


def test_console_routes_stay_out_of_the_openapi(server: LiveServer) -> None:
    paths = httpx.get(f"{server.url}/openapi.json").json()["paths"]
    assert not [p for p in paths if p.startswith(("/admin", "/app", "/login", "/logout"))]


def test_login_over_https_sets_secure_cookies(settings: Settings, accounts: Accounts) -> None:
    user = accounts.create("user")

    async def sign_in_over_https() -> httpx.Response:
        app = create_app(settings)
        async with started(app) as served:
            transport = httpx.ASGITransport(app=served.asgi)
            async with httpx.AsyncClient(
                transport=transport, base_url="https://console.test"
            ) as client:
                await client.get("/login")
                return await client.post(
                    "/login",
                    data={
                        "email": user.email,
                        "password": user.password,
                        "csrf_token": client.cookies["cf_csrf"],
                    },
                )

    response = run_async(sign_in_over_https())
    assert response.status_code == 303
    cookies = {c.split("=", 1)[0]: c.lower() for c in response.headers.get_list("set-cookie")}
    assert "secure" in cookies["cf_session"]
    assert "httponly" in cookies["cf_session"]
    assert "samesite=strict" in cookies["cf_session"]
    assert "secure" in cookies["cf_csrf"]
    assert "httponly" not in cookies["cf_csrf"]
