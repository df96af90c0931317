"""Operations routes: liveness, readiness, Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.api.deps import AppServices
from app.core.metrics import REGISTRY, sample_database
from app.core.migrations import current_revisions
from app.core.problems import problem_response

router = APIRouter(tags=["operations"])


@router.get("/healthz", summary="The process is up")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Database reachable and migrations at head",
    responses={503: {"description": "Not ready (`unavailable`)"}},
)
async def readyz(request: Request, services: AppServices) -> Response:
    db, heads = services.db, services.migration_heads
    try:
        async with db.engine.connect() as conn:
            current = await current_revisions(conn)
    except Exception:
        return problem_response(
            request,
            status=503,
            slug="unavailable",
            detail="The database is unreachable.",
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


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(services: AppServices) -> Response:
    await sample_database(services.db)
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
