"""Operations routes: liveness, readiness, Prometheus metrics."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, Field
from sqlalchemy import text

from app.api.deps import AppServices
from app.core.metrics import exposition, sample_database
from app.core.migrations import current_revisions
from app.core.problems import problem_response

router = APIRouter(tags=["operations"])
_READ_ONLY = text("SELECT current_setting('transaction_read_only')")


class HealthOut(BaseModel):
    status: Literal["ok"]


class ReadyOut(BaseModel):
    status: Literal["ready"]
    migrations: list[str] = Field(max_length=16, description="The revisions at head.")


@router.get("/healthz", summary="The process is up")
async def healthz() -> HealthOut:
    """Liveness: the process answers. It does not look at the database."""
    return HealthOut(status="ok")


@router.get(
    "/readyz",
    summary="A writable database reachable and migrations at head",
    response_model=ReadyOut,
    responses={503: {"description": "Not ready (`unavailable`)"}},
)
async def readyz(request: Request, services: AppServices) -> Response:
    """Readiness: a writable database answers and its migrations are at head; else 503 with
    `Retry-After`."""
    db, heads = services.db, services.migration_heads
    try:
        async with db.engine.connect() as conn:
            current = await current_revisions(conn)
            read_only = (await conn.execute(_READ_ONLY)).scalar_one() == "on"
            if read_only:
                await conn.invalidate()  # not back into the pool: requests need a primary
    except Exception:
        return problem_response(
            request,
            status=503,
            slug="unavailable",
            detail="The database is unreachable.",
            headers={"Retry-After": "2"},
        )
    if read_only:
        # A standby or a demoted primary: ready again once a writable primary answers.
        return problem_response(
            request,
            status=503,
            slug="unavailable",
            detail="The database is read-only: no writable primary is reachable.",
            headers={"Retry-After": "2"},
        )
    if current != heads:
        return problem_response(
            request,
            status=503,
            slug="unavailable",
            detail="Migrations are not at head.",
            headers={"Retry-After": "5"},
            current=sorted(current),
            heads=sorted(heads),
        )
    return JSONResponse({"status": "ready", "migrations": sorted(current)})


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={
        200: {
            "description": "Prometheus text format 0.0.4.",
            "content": {
                CONTENT_TYPE_LATEST: {"schema": {"type": "string", "maxLength": 16_777_216}}
            },
        }
    },
)
async def metrics(services: AppServices) -> Response:
    """Prometheus text exposition of the request, pool, outbox and domain metrics (of every
    process of the server when it runs several)."""
    await sample_database(services.db)
    return Response(exposition(), media_type=CONTENT_TYPE_LATEST)
