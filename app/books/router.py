"""HTTP routes of the books domain: books, their codes, assign and distribute.

Routes on single codes and the history live in `codes_router.py`.
"""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response, status
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse, StreamingResponse

from app.api.deps import AdminUser, AppServices, Audit, Idempotent, IdempotentUpload, Session
from app.books import assign, export, generate, import_jobs, imports, reports, service
from app.books.import_schemas import ImportJobOut
from app.books.imports_router import job_location
from app.books.schemas import (
    GENERATE_SYNC_MAX,
    BookIn,
    BookOut,
    BookPatch,
    BookReportOut,
    CodeOut,
    CodeStatus,
    DistributeIn,
    DistributeOut,
    DistributePreviewOut,
    GenerateIn,
    GenerateOut,
    ImportOut,
    Stats,
)
from app.books.types import Timestamp
from app.core.openapi import AUTH, problems
from app.core.pagination import (
    Cursor,
    Limit,
    Page,
    encode_cursor,
    int_cursor,
    time_id_cursor,
)
from app.core.problems import ValidationFailed
from app.core.report import Bucket

router = APIRouter(tags=["books"])
ADMIN = (*AUTH, 403)


@router.post(
    "/books",
    status_code=status.HTTP_201_CREATED,
    response_model=BookOut,
    responses=problems(*ADMIN, 409),
)
async def create_book(
    body: BookIn,
    admin: AdminUser,
    session: Session,
    response: Response,
    idem: Idempotent,
    audit: Audit,
) -> BookOut:
    """Create a coupon book with its settings (codes come later: upload or generate)."""
    book = await service.create_book(session, body)
    out = service.book_out(book, (await service.stats_for(session, [book.id]))[book.id])
    settings = out.model_dump(mode="json", exclude={"stats"})
    await audit.record(session, "book.create", "book", book.id, after=settings)
    response.headers["Location"] = f"/api/v1/books/{book.id}"
    await idem.remember(status.HTTP_201_CREATED, out)
    return out


@router.get("/books", response_model=Page[BookOut], responses=problems(*ADMIN))
async def list_books(
    admin: AdminUser, session: Session, limit: Limit = 50, cursor: Cursor = None
) -> Page[BookOut]:
    """Books in creation order, each with live stats."""
    books = await service.list_books(session, limit + 1, time_id_cursor(cursor))
    page = books[:limit]
    stats = await service.stats_for(session, [b.id for b in page])
    last = page[-1] if page else None
    return Page[BookOut](
        items=[service.book_out(b, stats[b.id]) for b in page],
        next_cursor=encode_cursor(last.created_at.isoformat(), last.id)
        if last is not None and len(books) > limit
        else None,
    )


@router.get("/books/{book_id}", response_model=BookOut, responses=problems(*ADMIN, 404))
async def get_book(book_id: uuid.UUID, admin: AdminUser, session: Session) -> BookOut:
    """A book with live stats: total, unassigned, assigned, locked, redeemed."""
    book = await service.get_book(session, book_id)
    return service.book_out(book, (await service.stats_for(session, [book.id]))[book.id])


@router.patch("/books/{book_id}", response_model=BookOut, responses=problems(*ADMIN, 404))
async def patch_book(
    book_id: uuid.UUID, body: BookPatch, admin: AdminUser, session: Session, audit: Audit
) -> BookOut:
    """Change any setting or the status (active, paused, archived)."""
    before = service.book_out(await service.get_book(session, book_id), Stats())
    book = await service.update_book(session, book_id, body)
    after = service.book_out(book, Stats())
    await audit.changed(session, "book.update", "book", book_id, before, after)
    return service.book_out(book, (await service.stats_for(session, [book.id]))[book.id])


@router.post(
    "/books/{book_id}/codes",
    status_code=status.HTTP_201_CREATED,
    response_model=ImportOut,
    responses=problems(*ADMIN, 400, 404, 409, 413, 415),
    openapi_extra=imports.OPENAPI_BODY,
)
async def import_codes(
    book_id: uuid.UUID,
    request: Request,
    admin: AdminUser,
    session: Session,
    response: Response,
    idem: IdempotentUpload,
    audit: Audit,
) -> ImportOut:
    """Upload codes as CSV (`text/csv` body, or multipart field `file`): one code per line,
    optional `code` header. All or nothing: any invalid line is 422 `invalid-csv`; codes of
    another book are 409 `code-exists`; codes already in this book are skipped."""
    out = await imports.import_request(session, request, book_id, admin.id, idem)
    await audit.record(session, "book.codes.upload", "book", book_id, after=out)
    response.headers["Location"] = f"/api/v1/books/{book_id}/codes"
    await idem.remember(status.HTTP_201_CREATED, out)
    return out


@router.post(
    "/books/{book_id}/codes/generate",
    status_code=status.HTTP_201_CREATED,
    response_model=GenerateOut,
    responses={
        202: {
            "model": ImportJobOut,
            "description": "Accepted as a background job (`async: true`, or more than"
            f" {GENERATE_SYNC_MAX:,} codes); `Location` names the job.",
        },
        **problems(*ADMIN, 404, 409),
    },
)
async def generate_codes(
    book_id: uuid.UUID,
    body: GenerateIn,
    admin: AdminUser,
    session: Session,
    response: Response,
    idem: Idempotent,
    services: AppServices,
    audit: Audit,
) -> GenerateOut | JSONResponse:
    """Generate `count` globally unique codes from a pattern (`#` digit 2-9, `?` letter,
    `*` either, other characters literal) or a prefix and length; no 0/O or 1/I/L.
    Up to 1,000,000 codes answer 201 when done; with `async: true` or more codes (up to
    10,000,000) the generation is a background job: 202 and `Location: /imports/{id}`.
    `checksum` (default: the book's): each code ends in a check character, and the
    pattern's literal prefix becomes a checksum namespace (generated in the request only)."""
    book = await service.get_book(session, book_id)
    checked = book.checksum if body.checksum is None else body.checksum
    if body.as_job:
        if checked:
            raise ValidationFailed(
                "checksum: codes with a check character are generated in the request, up to"
                f" {GENERATE_SYNC_MAX:,} at a time.",
                errors=[{"loc": ["body", "checksum"], "msg": "not with a background job"}],
            )
        generate.checked_slots(body)  # a pattern too small is 422 now, not a failed job
        job = await import_jobs.start_generation(session, book_id, admin.id, body)
        await audit.record(
            session, "book.codes.generate", "book", book_id, after=body.model_dump(mode="json")
        )
        response.headers["Location"] = location = job_location(job.id)
        await idem.remember(status.HTTP_202_ACCEPTED, job)
        return JSONResponse(
            jsonable_encoder(job),
            status_code=status.HTTP_202_ACCEPTED,
            headers={"Location": location},
        )
    inserted = await generate.generate(session, book_id, body, checked=checked)
    if checked:
        services.checksum_prefixes.stale()
    out = GenerateOut(inserted=inserted)
    asked = body.model_dump(mode="json")
    after = {**asked, "checksum": checked, "inserted": inserted}
    await audit.record(session, "book.codes.generate", "book", book_id, after=after)
    response.headers["Location"] = f"/api/v1/books/{book_id}/codes"
    await idem.remember(status.HTTP_201_CREATED, out)
    return out


@router.get("/books/{book_id}/codes", response_model=Page[CodeOut], responses=problems(*ADMIN, 404))
async def list_book_codes(
    book_id: uuid.UUID,
    admin: AdminUser,
    session: Session,
    status_: Annotated[CodeStatus | None, Query(alias="status")] = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Page[CodeOut]:
    """The book's codes by insertion order, optionally by status."""
    await service.get_book(session, book_id)
    rows = await service.list_codes(
        session,
        book_id=book_id,
        user_id=None,
        status=status_,
        limit=limit + 1,
        after=int_cursor(cursor),
    )
    page = rows[:limit]
    return Page[CodeOut](
        items=[c for _, c in page],
        next_cursor=encode_cursor(page[-1][0]) if len(rows) > limit else None,
    )


@router.get(
    "/books/{book_id}/codes.csv",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "CSV `code,status,user_id,assigned_at,redemptions`, streamed.",
            "content": {"text/csv": {"schema": {"type": "string"}}},
        },
        **problems(*ADMIN, 404),
    },
)
async def export_codes(
    book_id: uuid.UUID, admin: AdminUser, session: export.StreamSession
) -> StreamingResponse:
    """Every code of the book as CSV; cells that a spreadsheet would run as a formula are
    prefixed with `'`."""
    await service.get_book(session, book_id)
    return StreamingResponse(
        export.rows(session, book_id),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="book-{book_id}.csv"'},
    )


@router.get(
    "/books/{book_id}/report",
    response_model=BookReportOut,
    responses=problems(*ADMIN, 404),
)
async def book_report(
    book_id: uuid.UUID,
    admin: AdminUser,
    session: Session,
    bucket: Bucket = Bucket.day,
    since: Annotated[Timestamp | None, Query()] = None,
    until: Annotated[Timestamp | None, Query()] = None,
) -> BookReportOut:
    """Codes assigned, locked, redeemed and rolled back per `bucket` (hour or day, cut in
    UTC) from `since` to `until` (default: the last 14 days, or 48 hours by the hour), every
    bucket present. At most 1,000 buckets (422 otherwise)."""
    return await reports.book_report(session, book_id, bucket, since, until)


@router.post(
    "/books/{book_id}/distribute/preview",
    response_model=DistributePreviewOut,
    responses=problems(*ADMIN, 404, 409),
)
async def preview_distribute(
    book_id: uuid.UUID, body: DistributeIn, admin: AdminUser, session: Session
) -> DistributePreviewOut:
    """What `distribute` with this body would do now, changing nothing: the audience, how
    many would get a code, how many already hold one or are at their limit, how many would
    miss out because codes run out. 409 `book-inactive` as distribute."""
    return await assign.preview_distribute(
        session, book_id, segment_id=body.segment_id, user_ids=body.user_ids
    )


@router.post(
    "/books/{book_id}/distribute",
    response_model=DistributeOut,
    responses=problems(*ADMIN, 404, 409),
)
async def distribute(
    book_id: uuid.UUID,
    body: DistributeIn,
    admin: AdminUser,
    session: Session,
    idem: Idempotent,
    audit: Audit,
) -> DistributeOut:
    """One code per user to a segment or a list of users, in ascending user id until codes
    run out, respecting `max_codes_per_user`."""
    out = await assign.distribute(
        session, book_id, admin.id, segment_id=body.segment_id, user_ids=body.user_ids
    )
    to = {"segment_id": body.segment_id, "users": len(body.user_ids or [])}
    await audit.record(
        session, "book.distribute", "book", book_id, after={**to, **out.model_dump()}
    )
    await idem.remember(status.HTTP_200_OK, out)
    return out
