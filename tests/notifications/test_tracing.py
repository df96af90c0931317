"""A promo's start in one trace: the request that creates the promo schedules the start job
with its trace context, the worker's fan-out job and the webhook deliveries it queues run as
spans of that trace, and the webhook request carries its `traceparent`."""

from __future__ import annotations

import asyncpg
import httpx
import orjson
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from app.core.security import Role
from app.notifications.webhook import WEBHOOK_DELIVER
from app.promos.events import PROMO_STARTED
from tests.conftest import MakeUser
from tests.notifications.conftest import (
    SECRET,
    Place,
    RunWorker,
    Sink,
    add_users,
    fanout_finished,
    wait_for,
)
from tests.promos.support import create_promo
from tests.tracing_support import PARENT_TRACE, TRACEPARENT, ancestors, hex_trace, spans

__all__ = ["spans"]


async def test_promo_start_fan_out_and_webhooks_are_in_the_creating_request_trace(
    live_client: httpx.AsyncClient,
    make_live_user: MakeUser,
    pg: asyncpg.Connection,
    run_worker: RunWorker,
    sink: Sink,
    spans: InMemorySpanExporter,
) -> None:
    admin = await make_live_user(Role.admin)
    place = Place()
    await add_users(pg, place.north(100), 3)
    # The create request itself continues a caller's trace.
    traced = httpx.AsyncClient(
        transport=live_client._transport,
        base_url=str(live_client.base_url),
        headers={"traceparent": TRACEPARENT},
    )
    async with traced:
        promo = await create_promo(traced, admin, at=(place.lat, place.lng))
    await run_worker(webhook_url=sink.url, webhook_secret=SECRET)
    assert await wait_for(lambda: fanout_finished(pg, promo["id"])) == "done"
    await wait_for(lambda: sink.for_promo(promo["id"]), what="the webhook delivery")
    await wait_for(
        lambda: [s for s in spans.get_finished_spans() if s.name == f"outbox {WEBHOOK_DELIVER}"],
        what="the delivery's span",
    )

    finished = spans.get_finished_spans()
    (create,) = [s for s in finished if s.name == "POST /api/v1/promos"]
    assert hex_trace(create) == PARENT_TRACE
    in_trace = [s for s in finished if hex_trace(s) == PARENT_TRACE]
    (started,) = [s for s in in_trace if s.name == f"outbox {PROMO_STARTED}"]
    assert started.kind is SpanKind.CONSUMER
    assert create in ancestors(started, finished)
    # The fan-out's own statements are children of its job span.
    assert [s for s in in_trace if s.kind is SpanKind.CLIENT and started in ancestors(s, finished)]
    deliveries = [s for s in in_trace if s.name == f"outbox {WEBHOOK_DELIVER}"]
    assert deliveries and all(started in ancestors(d, finished) for d in deliveries)
    # The webhook receiver can join the trace too.
    (status, body, headers) = sink.for_promo(promo["id"])[0]
    assert status == 200 and orjson.loads(body)
    assert headers["traceparent"].split("-")[1] == PARENT_TRACE
