"""HTML routes of the web console: login/logout and the page shells of `/admin` and `/app`.

Pages are rendered here with the forms and tables they need; their small scripts (in
`static/js`) fill them from the JSON API under `/api/v1` with the session cookie. None of
these routes is part of the API contract, so they stay out of the OpenAPI schema.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Form, Request, status
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from pydantic import ValidationError

from app.api.deps import AppServices, RateLimit, Session, Tokens
from app.auth import service as users
from app.auth.login import login as throttled_login
from app.auth.schemas import RegisterIn
from app.console.session import (
    clear_session,
    csrf_matches,
    csrf_token,
    new_csrf_token,
    safe_next,
    set_csrf_cookie,
    set_session_cookie,
    viewer,
)
from app.core.clientip import client_address
from app.core.problems import NotFound, ProblemError
from app.core.ratelimit import client_ip
from app.core.security import Principal, Role

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=HERE / "templates")

router = APIRouter(include_in_schema=False)
router.mount("/console/static", StaticFiles(directory=HERE / "static"), name="console-static")

# Pages hold personal data and load only our own scripts and styles: no caching, and a
# content security policy that refuses inline or foreign code.
_PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
}


def _home(role: Role) -> str:
    return "/admin" if role is Role.admin else "/app"


def _login_page(
    request: Request,
    *,
    error: str | None = None,
    next_url: str = "",
    status_code: int = 200,
    email: str = "",
) -> HTMLResponse:
    return _form_page(
        request,
        "login.html",
        status_code,
        {"error": error, "next_url": next_url, "title": "Sign in", "email": email},
    )


def _form_page(
    request: Request, template: str, status_code: int, context: dict[str, Any]
) -> HTMLResponse:
    """A signed-out form page with a fresh (or the current) CSRF token."""
    token = csrf_token(request)
    response = templates.TemplateResponse(
        request,
        template,
        {"csrf_token": token, **context},
        status_code=status_code,
        headers=_PAGE_HEADERS,
    )
    set_csrf_cookie(request, response, token)
    return response


def _signup_page(
    request: Request,
    *,
    errors: dict[str, str] | None = None,
    error: str | None = None,
    email: str = "",
    status_code: int = 200,
) -> HTMLResponse:
    return _form_page(
        request,
        "signup.html",
        status_code,
        {"errors": errors or {}, "error": error, "email": email, "title": "Create an account"},
    )


@router.get("/favicon.ico")
async def favicon() -> FileResponse:
    """Browsers ask for it on every page outside the console too (the API docs)."""
    return FileResponse(
        HERE / "static" / "favicon.svg",
        media_type="image/svg+xml",
        headers={"Cache-Control": "public, max-age=86400"},
    )


@router.get("/login", response_class=HTMLResponse)
async def login_form(request: Request, next: str = "") -> Response:
    principal = await viewer(request)
    if principal is not None:
        return RedirectResponse(safe_next(next, _home(principal.role)), status.HTTP_303_SEE_OTHER)
    return _login_page(request, next_url=safe_next(next, ""))


@router.post("/login", response_class=HTMLResponse)
async def login(
    request: Request,
    session: Session,
    limits: RateLimit,
    email: Annotated[str, Form(max_length=320)],
    password: Annotated[str, Form(max_length=1024)],
    tokens: Tokens,
    services: AppServices,
    csrf_token: Annotated[str, Form(max_length=128)] = "",
    next: Annotated[str, Form(max_length=2048)] = "",
) -> Response:
    """Check the login form's CSRF token, then the credentials (failures throttled like the
    API's logins); on success the JWT goes into an HttpOnly cookie and the CSRF cookie is
    rotated."""
    next_url = safe_next(next, "")
    if not csrf_matches(request, csrf_token):
        return _login_page(
            request,
            error="The form expired. Please sign in again.",
            next_url=next_url,
            status_code=status.HTTP_403_FORBIDDEN,
        )
    try:
        await limits.hit(limits.auth, "token", client_ip(request))
        address = client_address(request, services.lockouts.trusted_proxies)
        user = await throttled_login(session, services.lockouts, address, email, password)
    except ProblemError as exc:
        return _login_page(
            request, error=exc.detail, next_url=next_url, status_code=exc.status, email=email
        )
    role = Role(user.role)
    response = RedirectResponse(safe_next(next_url, _home(role)), status.HTTP_303_SEE_OTHER)
    set_session_cookie(request, response, tokens.issue(user.id, role), tokens.ttl_seconds)
    set_csrf_cookie(request, response, new_csrf_token())
    return response


@router.get("/signup", response_class=HTMLResponse)
async def signup_form(request: Request) -> Response:
    if await viewer(request) is not None:
        return RedirectResponse("/app", status.HTTP_303_SEE_OTHER)
    return _signup_page(request)


_SIGNUP_FIELDS = {
    "email": "Enter an email address like ana@example.com.",
    "password": "Use at least 8 characters.",
}


@router.post("/signup", response_class=HTMLResponse)
async def signup(
    request: Request,
    session: Session,
    limits: RateLimit,
    tokens: Tokens,
    email: Annotated[str, Form(max_length=320)] = "",
    password: Annotated[str, Form(max_length=1024)] = "",
    csrf_token: Annotated[str, Form(max_length=128)] = "",
) -> Response:
    """Create a user account (as `POST /auth/register`), then sign it in and open `/app`.
    Each problem is shown on its field; the email typed is kept."""
    if not csrf_matches(request, csrf_token):
        return _signup_page(
            request,
            error="The form expired. Please try again.",
            email=email,
            status_code=status.HTTP_403_FORBIDDEN,
        )
    try:
        body = RegisterIn(email=email, password=password)
    except ValidationError as exc:
        fields = {str(e["loc"][0]) for e in exc.errors() if e["loc"]}
        errors = {f: _SIGNUP_FIELDS[f] for f in _SIGNUP_FIELDS if f in fields}
        return _signup_page(
            request, errors=errors, email=email, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT
        )
    try:
        await limits.hit(limits.auth, "register", client_ip(request))
        user = await users.register(session, body.email, body.password)
    except ProblemError as exc:
        errors = {"email": exc.detail} if exc.status == status.HTTP_409_CONFLICT else {}
        return _signup_page(
            request,
            errors=errors,
            error=None if errors else exc.detail,
            email=email,
            status_code=exc.status,
        )
    response = RedirectResponse("/app", status.HTTP_303_SEE_OTHER)
    set_session_cookie(request, response, tokens.issue(user.id, Role.user), tokens.ttl_seconds)
    set_csrf_cookie(request, response, new_csrf_token())
    return response


@router.post("/logout")
async def logout(
    request: Request, csrf_token: Annotated[str, Form(max_length=128)] = ""
) -> Response:
    if not csrf_matches(request, csrf_token):
        return HTMLResponse("The form expired; reload the page.", status.HTTP_403_FORBIDDEN)
    response = RedirectResponse("/login", status.HTTP_303_SEE_OTHER)
    clear_session(request, response)
    return response


async def _page(
    request: Request, session: Session, template: str, *, admin: bool, **context: Any
) -> Response:
    """Render a console page for the cookie's user; strangers go to the login form."""
    principal: Principal | None = await viewer(request)
    if principal is None:
        target = quote(str(request.url.path), safe="/")
        return RedirectResponse(f"/login?next={target}", status.HTTP_303_SEE_OTHER)
    try:
        user = await users.get_user(session, principal.id)
    except NotFound:
        return RedirectResponse("/login", status.HTTP_303_SEE_OTHER)
    base = {
        "csrf_token": csrf_token(request),
        "email": user.email,
        "is_admin": principal.is_admin,
        "path": request.url.path,
    }
    if admin and not principal.is_admin:
        return templates.TemplateResponse(
            request,
            "forbidden.html",
            {**base, "title": "Admins only"},
            status_code=403,
            headers=_PAGE_HEADERS,
        )
    return templates.TemplateResponse(request, template, {**base, **context}, headers=_PAGE_HEADERS)


@router.get("/admin", response_class=HTMLResponse)
async def admin_books(request: Request, session: Session) -> Response:
    return await _page(request, session, "admin/books.html", admin=True, title="Books")


@router.get("/admin/books/{book_id}", response_class=HTMLResponse)
async def admin_book(request: Request, session: Session, book_id: uuid.UUID) -> Response:
    return await _page(
        request, session, "admin/book.html", admin=True, title="Book", book_id=str(book_id)
    )


@router.get("/admin/segments", response_class=HTMLResponse)
async def admin_segments(request: Request, session: Session) -> Response:
    return await _page(request, session, "admin/segments.html", admin=True, title="Segments")


@router.get("/admin/segments/{segment_id}", response_class=HTMLResponse)
async def admin_segment(request: Request, session: Session, segment_id: uuid.UUID) -> Response:
    return await _page(
        request,
        session,
        "admin/segment.html",
        admin=True,
        title="Segment",
        segment_id=str(segment_id),
    )


@router.get("/admin/stores", response_class=HTMLResponse)
async def admin_stores(request: Request, session: Session) -> Response:
    return await _page(
        request, session, "admin/stores.html", admin=True, title="Stores and products"
    )


@router.get("/admin/promos", response_class=HTMLResponse)
async def admin_promos(request: Request, session: Session) -> Response:
    return await _page(request, session, "admin/promos.html", admin=True, title="Promos")


@router.get("/admin/promos/{promo_id}", response_class=HTMLResponse)
async def admin_promo(request: Request, session: Session, promo_id: uuid.UUID) -> Response:
    return await _page(
        request, session, "admin/promo.html", admin=True, title="Promo", promo_id=str(promo_id)
    )


@router.get("/admin/history", response_class=HTMLResponse)
async def admin_history(request: Request, session: Session) -> Response:
    return await _page(request, session, "admin/history.html", admin=True, title="History")


@router.get("/admin/audit", response_class=HTMLResponse)
async def admin_audit(request: Request, session: Session) -> Response:
    return await _page(request, session, "admin/audit.html", admin=True, title="Audit trail")


@router.get("/admin/dead-letters", response_class=HTMLResponse)
async def admin_dead_letters(request: Request, session: Session) -> Response:
    return await _page(
        request, session, "admin/dead_letters.html", admin=True, title="Dead letters"
    )


@router.get("/app", response_class=HTMLResponse)
async def app_codes(request: Request, session: Session) -> Response:
    return await _page(request, session, "app/codes.html", admin=False, title="My codes")


@router.get("/app/promos", response_class=HTMLResponse)
async def app_promos(request: Request, session: Session) -> Response:
    return await _page(request, session, "app/promos.html", admin=False, title="Promos near me")


@router.get("/app/history", response_class=HTMLResponse)
async def app_history(request: Request, session: Session) -> Response:
    return await _page(request, session, "app/history.html", admin=False, title="My history")


@router.get("/app/notifications", response_class=HTMLResponse)
async def app_notifications(request: Request, session: Session) -> Response:
    return await _page(
        request, session, "app/notifications.html", admin=False, title="Notifications"
    )
