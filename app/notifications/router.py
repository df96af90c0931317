"""HTTP routes of the notifications domain: inbox, live stream, dead letters (admin)."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query, Request
from sse_starlette import EventSourceResponse

from app.api.deps import DB, AdminUser, AppSettings, Audit, CurrentUser, Idempotent, Session
from app.core.openapi import AUTH, problems
from app.core.pagination import (
    Cursor,
    Limit,
    Page,
    bad_cursor,
    decode_cursor,
    encode_cursor,
    int_cursor,
)
from app.notifications import service
from app.notifications.deps import Hub
from app.notifications.schemas import DeadLetterOut, NotificationOut, NotificationStatus
from app.notifications.stream import notification_events

router = APIRouter(tags=["notifications"])

_BIGINT = 2**63 - 1
NotificationId = Annotated[int, Path(ge=1, le=_BIGINT, description="Notification id.")]
JobId = Annotated[int, Path(ge=1, le=_BIGINT, description="Dead letter (outbox job) id.")]


@router.get(
    "/me/notifications",
    response_model=Page[NotificationOut],
    responses=problems(*AUTH),
    summary="The caller's notifications, newest first",
)
async def list_my_notifications(
    user: CurrentUser,
    session: Session,
    limit: Limit = 50,
    cursor: Cursor = None,
    status: Annotated[
        NotificationStatus | None, Query(description="Only `unread` or only `read`.")
    ] = None,
) -> Page[NotificationOut]:
    """At most one notification per local day. New ones also arrive live on
    `GET /api/v1/me/notifications/stream` (Server-Sent Events, `text/event-stream`: events
    `notification` with the notification as JSON and its `id` as event id; reconnect with
    `Last-Event-ID` to replay what was missed; comment heartbeats every 15 s)."""
    values = decode_cursor(cursor, 1)
    before: date | None = None
    if values is not None:
        try:
            before = date.fromisoformat(str(values[0]))
        except ValueError as exc:
            raise bad_cursor() from exc
    rows = await service.inbox(session, user.id, limit + 1, before, status)
    page = rows[:limit]
    return Page[NotificationOut](
        items=page, next_cursor=encode_cursor(page[-1].day) if len(rows) > limit else None
    )


@router.post(
    "/me/notifications/{notification_id}/read",
    response_model=NotificationOut,
    responses=problems(*AUTH, 404, 409),
    summary="Mark one of the caller's notifications read",
)
async def mark_read(
    notification_id: NotificationId, user: CurrentUser, session: Session, idem: Idempotent
) -> NotificationOut:
    """Idempotent: reading again keeps the first `read_at`. Another user's id is 404."""
    out = await service.mark_read(session, user.id, notification_id)
    await idem.remember(200, out)
    return out


_STREAM_EXAMPLE = (
    'event: ready\ndata: {"after": 41}\n\n'
    "id: 42\nevent: notification\n"
    'data: {"id": 42, "promo_id": "0b7e4a51-96a4-4f0e-8d55-3a4c0e7d2f10",'
    ' "title": "Croissant a 1 euro", "day": "2026-11-23", "status": "unread",'
    ' "created_at": "2026-11-23T09:00:00.512Z", "read_at": null}\n\n'
    ": ping - 2026-11-23 09:00:15.000000+00:00\n\n"
)
_STREAM_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": (
            "Server-Sent Events, open until the client leaves. First `ready` (data"
            ' `{"after": <id>}`: the stream sends notifications with a greater id), then one'
            " `notification` per new notification, oldest first: `id` is the notification id"
            " and `data` the notification as JSON (`NotificationOut`). A comment line"
            " (`: ping - <time>`) every `NOTIFY_SSE_HEARTBEAT_S` seconds keeps proxies from"
            " closing it. After a reconnect, `Last-Event-ID` replays what was missed."
        ),
        "content": {
            "text/event-stream": {
                "schema": {"type": "string"},
                "example": _STREAM_EXAMPLE,
                # Per event name, the fields it carries (machine-readable for clients).
                "x-events": {
                    "ready": {
                        "data": {
                            "type": "object",
                            "properties": {
                                "after": {"type": "integer", "format": "int64", "minimum": 0}
                            },
                            "required": ["after"],
                        }
                    },
                    "notification": {
                        "id": {"type": "string", "description": "The notification id."},
                        "data": {"$ref": "#/components/schemas/NotificationOut"},
                    },
                },
            }
        },
    },
    **problems(*AUTH),
}


# An endless stream: the API fuzzers leave it out by configuration (the OpenAPI tests skip
# operations answering `text/event-stream`); tests/notifications/test_stream.py covers it.
@router.get(
    "/me/notifications/stream",
    response_class=EventSourceResponse,
    responses=_STREAM_RESPONSES,
    summary="The caller's new notifications, live (Server-Sent Events)",
)
async def stream_my_notifications(
    request: Request,
    user: CurrentUser,
    hub: Hub,
    settings: AppSettings,
    db: DB,
    last_event_id: Annotated[
        str | None,
        Header(
            alias="Last-Event-ID",
            # documented, not enforced: a longer id is ignored like any other non-number
            json_schema_extra={"maxLength": 64},
            description=(
                "The `id` of the last `notification` event received: the stream first"
                " replays the caller's notifications after it. Anything but a whole number"
                " is ignored (the stream starts from now)."
            ),
        ),
    ] = None,
) -> EventSourceResponse:
    """Sends `ready`, then each new notification as it is created. Browsers' `EventSource`
    reconnects by itself and sends `Last-Event-ID`; errors before the stream starts are
    problems (401 without a valid token)."""
    after: int | None = None
    if last_event_id is not None:
        try:
            after = int(last_event_id)
        except ValueError:
            after = None
        if after is not None and not 0 <= after <= _BIGINT:
            after = None
    if after is None:
        # Read before the stream starts, so a database that is away is a 503 problem with
        # Retry-After, not a stream that breaks after its 200.
        async with db.sessionmaker() as session, session.begin():
            after = await service.latest_id(session, user.id)
    heartbeat = settings.notifications.notify_sse_heartbeat_s
    events = notification_events(
        db,
        hub,
        user.id,
        after,
        heartbeat,
        request.is_disconnected,
    )
    return EventSourceResponse(events, ping=int(max(heartbeat, 1)))


@router.get(
    "/notifications/dead-letters",
    response_model=Page[DeadLetterOut],
    responses=problems(*AUTH, 403),
    summary="Jobs whose delivery attempts ran out (admin)",
)
async def list_dead_letters(
    admin: AdminUser, session: Session, limit: Limit = 50, cursor: Cursor = None
) -> Page[DeadLetterOut]:
    """Webhook batches (and other jobs) that failed `max_attempts` times, oldest first."""
    rows = await service.dead_letters(session, limit + 1, int_cursor(cursor))
    page = rows[:limit]
    return Page[DeadLetterOut](
        items=page, next_cursor=encode_cursor(page[-1].id) if len(rows) > limit else None
    )


@router.post(
    "/notifications/dead-letters/{job_id}/retry",
    response_model=DeadLetterOut,
    responses=problems(*AUTH, 403, 404, 409),
    summary="Queue a dead letter again with fresh attempts (admin)",
)
async def retry_dead_letter(
    job_id: JobId, admin: AdminUser, session: Session, idem: Idempotent, audit: Audit
) -> DeadLetterOut:
    """The job goes back to `pending` with its attempts reset; a worker picks it up at once.
    A job that is not dead (unknown, or already retried) is 404."""
    out = await service.retry_dead_letter(session, job_id)
    await audit.record(session, "notification.retry", "outbox_job", job_id, after=out)
    await idem.remember(200, out)
    return out
