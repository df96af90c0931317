"""HTTP routes of import jobs (admin): upload a CSV as a job, watch it, list a book's jobs,
download its error report, cancel it. Generations above the synchronous limit become jobs
in `router.py` (`POST /books/{id}/codes/generate`)."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Request, Response, status
from fastapi.responses import StreamingResponse

from app.api.deps import AdminUser, Audit, IdempotentUpload, Session
from app.books import import_jobs, imports
from app.books.export import StreamSession
from app.books.import_schemas import ImportJobOut
from app.core.openapi import AUTH, problems
from app.core.pagination import Cursor, Limit, Page, encode_cursor, time_id_cursor

router = APIRouter(tags=["imports"])
ADMIN = (*AUTH, 403)


def job_location(job_id: uuid.UUID) -> str:
    return f"/api/v1/imports/{job_id}"


@router.post(
    "/books/{book_id}/imports",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=ImportJobOut,
    responses=problems(*ADMIN, 404, 409, 413, 415),
    openapi_extra=imports.OPENAPI_BODY,
)
async def create_import(
    book_id: uuid.UUID,
    request: Request,
    admin: AdminUser,
    session: Session,
    response: Response,
    idem: IdempotentUpload,
    audit: Audit,
) -> ImportJobOut:
    """Upload codes as CSV (same format as `POST /books/{id}/codes`) to be imported by a
    background job: 202 once the whole file is stored, with `Location` naming the job.
    The job validates and stores the file all or nothing; watch it at `GET /imports/{id}`."""
    out = await import_jobs.receive_upload(session, request, book_id, admin.id, idem)
    stored = {"import_id": out.id, "received_bytes": out.received_bytes, "state": out.state}
    await audit.record(session, "book.codes.upload", "book", book_id, after=stored)
    response.headers["Location"] = job_location(out.id)
    await idem.remember(status.HTTP_202_ACCEPTED, out)
    return out


@router.get("/imports/{import_id}", response_model=ImportJobOut, responses=problems(*ADMIN, 404))
async def get_import(import_id: uuid.UUID, admin: AdminUser, session: Session) -> ImportJobOut:
    """An import job: state (received, queued, validating, inserting, done, failed,
    cancelled), counters, the first 100 bad lines and progress (0..1)."""
    return await import_jobs.get_job(session, import_id)


@router.get(
    "/books/{book_id}/imports",
    response_model=Page[ImportJobOut],
    responses=problems(*ADMIN, 404),
)
async def list_imports(
    book_id: uuid.UUID,
    admin: AdminUser,
    session: Session,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Page[ImportJobOut]:
    """The book's import jobs, newest first."""
    jobs = await import_jobs.list_jobs(session, book_id, limit + 1, time_id_cursor(cursor))
    page = jobs[:limit]
    last = page[-1] if page else None
    return Page[ImportJobOut](
        items=page,
        next_cursor=encode_cursor(last.created_at.isoformat(), last.id)
        if last is not None and len(jobs) > limit
        else None,
    )


@router.get(
    "/imports/{import_id}/errors.csv",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "CSV `line,code,reason`: every bad line of a failed job, streamed.",
            "content": {"text/csv": {"schema": {"type": "string"}}},
        },
        **problems(*ADMIN, 404),
    },
)
async def import_errors(
    import_id: uuid.UUID, admin: AdminUser, session: StreamSession
) -> StreamingResponse:
    """Every bad line of a failed job (only the header for any other)."""
    lines = await import_jobs.error_report(session, import_id)
    return StreamingResponse(
        lines,
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="import-{import_id}-errors.csv"'},
    )


@router.delete(
    "/imports/{import_id}", response_model=ImportJobOut, responses=problems(*ADMIN, 404, 409)
)
async def cancel_import(
    import_id: uuid.UUID, admin: AdminUser, session: Session, audit: Audit
) -> ImportJobOut:
    """Cancel a job that has not finished: nothing of it is stored. 409 `import-finished`
    once it is done or failed; cancelling a cancelled job answers it again."""
    before = await import_jobs.get_job(session, import_id)
    out = await import_jobs.cancel(session, import_id)
    if before.state != out.state:
        await audit.record(
            session,
            "book.codes.upload.cancel",
            "book",
            out.book_id,
            before={"import_id": out.id, "state": before.state},
            after={"import_id": out.id, "state": out.state},
        )
    return out
