"""Application factory: settings, database, routers, middleware and lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import structlog
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette.middleware import Middleware

from app.api.contract import contract
from app.api.health import router as health_router
from app.api.services import STATE_KEY, Services
from app.audit.router import router as audit_router
from app.auth.external import ExternalUsers
from app.auth.router import router as auth_router
from app.books.checksum import load_prefixes
from app.books.codes_router import router as codes_router
from app.books.history_router import router as history_router
from app.books.imports_router import router as imports_router
from app.books.router import router as books_router
from app.console.router import router as console_router
from app.core import tracing
from app.core.cache import Cached
from app.core.clientip import parse_networks
from app.core.coalesce import Coalescer
from app.core.db import Database
from app.core.front import ServiceApp
from app.core.heap import frozen_startup_heap
from app.core.idempotency import install_idempotency_handler
from app.core.lockout import Lockouts
from app.core.logging import configure_logging
from app.core.metrics import POOL, batch_observer, publishing
from app.core.middleware import RequestContextMiddleware
from app.core.migrations import head_revisions
from app.core.openapi_contract import install_contract
from app.core.problems import install_problem_handlers
from app.core.ratelimit import RateLimits
from app.core.security import TokenService
from app.core.settings import Environment, Settings
from app.lockouts.router import router as lockouts_router
from app.notifications.config import direct_url
from app.notifications.deps import HUB_STATE_KEY
from app.notifications.router import router as notifications_router
from app.notifications.stream import NotificationHub
from app.notifications.worker import WORKER_STATE_KEY, start_worker
from app.privacy.router import router as privacy_router
from app.promos.reservations_router import router as reservations_router
from app.promos.router import router as promos_router
from app.segments.router import router as segments_router

log = structlog.get_logger(__name__)
State = dict[str, Any]

API_PREFIX = "/api/v1"
API_ROUTERS = (
    codes_router,
    reservations_router,
    books_router,
    history_router,
    imports_router,
    promos_router,
    auth_router,
    segments_router,
    notifications_router,
    lockouts_router,
    audit_router,
    privacy_router,
)
DESCRIPTION = """
Coupon books and flash promos: unique codes handed out fairly and never twice, and
time-boxed deals with limited units that are never oversold.

Authenticate with `POST /api/v1/auth/token` (form fields `username`, `password`), then use
**Authorize** with the `access_token`. Errors are RFC 9457 `application/problem+json`.
State-changing POSTs accept an `Idempotency-Key` header.
"""


def build_services(settings: Settings) -> Services:
    """Everything request handlers use, built once from one `Settings`."""
    db = Database.from_settings(settings)
    return Services(
        settings=settings,
        db=db,
        tokens=TokenService.from_settings(settings),
        rate_limits=RateLimits.build(
            settings.rate_limit_enabled, settings.rate_limit_auth, settings.rate_limit_assign
        ),
        external_users=ExternalUsers(settings, db),
        migration_heads=frozenset(head_revisions()),
        checksum_prefixes=Cached(load_prefixes, (), settings.checksum_refresh_seconds),
        lockouts=Lockouts(
            enabled=settings.rate_limit_enabled and settings.lockout_max_failures > 0,
            max_failures=settings.lockout_max_failures,
            window_seconds=settings.lockout_window_seconds,
            refresh_seconds=settings.lockout_refresh_seconds,
            trusted_proxies=parse_networks(settings.trusted_proxies),
        ),
        assign_batches=_coalescer(settings, "assign"),
        reserve_batches=_coalescer(settings, "reserve"),
    )


def _coalescer(settings: Settings, path: str) -> Coalescer[Any, Any] | None:
    if not settings.coalesce_hot_paths:
        return None
    return Coalescer(settings.coalesce_max_batch, batch_observer(path))


def _lifespan(settings: Settings) -> Callable[[FastAPI], AbstractAsyncContextManager[State]]:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[State]:
        services = build_services(settings)
        hub = NotificationHub(direct_url(settings) or "")
        # Routes resolve their include context lazily; doing it here keeps that work (and
        # the lean route index) off the first request, and a route the index misses stops
        # the start.
        if isinstance(app, ServiceApp):
            app.index_lean_routes()
        POOL.db = services.db
        log.info("started", env=settings.env.value, lean_routes=settings.lean_routes)
        try:
            # The outbox worker runs here unless RUN_WORKER=false.
            async with start_worker(settings) as worker, publishing():
                with frozen_startup_heap():
                    yield {STATE_KEY: services, HUB_STATE_KEY: hub, WORKER_STATE_KEY: worker}
        finally:
            await hub.close()
            await services.external_users.dispose()
            await services.db.dispose()
            log.info("stopped")

    return lifespan


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the ASGI app. Settings come from the environment unless given (tests)."""
    settings = settings or Settings()
    json_logs = (
        settings.log_json
        if settings.log_json is not None
        else (settings.env is not Environment.dev)
    )
    configure_logging(settings.log_level, json=json_logs)
    tracing.configure(settings.otel_enabled)
    docs = settings.expose_docs or not settings.is_production
    # Outermost first. Lean routes get the same middleware in front of them (ServiceApp).
    # CORS is outermost, so every answer to an allowed origin carries its headers, the 413
    # and 500 answered by the request middleware included.
    middleware = []
    if settings.cors_origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=settings.cors_origins,
                allow_methods=["*"],
                allow_headers=["Authorization", "Content-Type", "Idempotency-Key", "X-Request-ID"],
                expose_headers=["Location", "Retry-After", "X-Request-ID"],
            )
        )
    middleware.append(
        Middleware(
            RequestContextMiddleware,
            max_body=settings.max_body_bytes,
            max_upload=settings.max_upload_bytes,
            problem_base=settings.problem_base,
        )
    )
    app = ServiceApp(
        title="Coupon books & flash promos",
        version="1.0.0",
        description=DESCRIPTION,
        lifespan=_lifespan(settings),
        lean_routes=settings.lean_routes,
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
        openapi_url="/openapi.json" if docs else None,
        middleware=middleware,
        # FastAPI's own OpenTelemetry stays off: it would miss the hot paths (the front door
        # answers them below FastAPI's entry) and duplicate our spans elsewhere. Traces come
        # from app/core/tracing.py (OTEL_ENABLED), metrics from /metrics.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    install_problem_handlers(app)
    install_idempotency_handler(app)

    # Routes are matched in order, one by one: the hot paths come first.
    for router in API_ROUTERS:
        app.include_router(router, prefix=API_PREFIX)
    app.include_router(health_router)
    app.include_router(console_router)
    install_contract(app, contract(API_PREFIX))
    return app
