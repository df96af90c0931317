"""OpenTelemetry traces, off unless OTEL_ENABLED=true.

On: every HTTP request is a server span (the hot paths too: the span is opened by our one
middleware, which the front door also passes through), every asyncpg call a client span
under it (both pools: SQLAlchemy's dialect runs on asyncpg), the W3C `traceparent` of the
request is stored with the outbox jobs it schedules, so a job's span (and the jobs and
webhook deliveries it makes) joins the request's trace. Spans are exported by OTLP over HTTP
when OTEL_EXPORTER_OTLP_ENDPOINT (or ..._TRACES_ENDPOINT) is set, with the standard OTEL_*
variables for the rest.

Off: nothing of OpenTelemetry is imported, and each request, job or webhook pays one test
of a module attribute (`TRACER is None`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from typing import TYPE_CHECKING, Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Tracer

# The tracer while tracing is on; None (the default) when it is off.
TRACER: Tracer | None = None
# Key of an outbox job's payload holding the W3C trace context it was scheduled in.
TRACE_KEY = "trace"
SERVICE_NAME = "couponflash"


def configure(enabled: bool) -> None:
    """Turn tracing on (a provider exporting by OTLP when an endpoint is configured) when
    `enabled`; called once per process at start. Off leaves everything as it is."""
    if not enabled:
        return
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=_resource(), sampler=_sampler())
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
    ):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    install(provider)


def install(provider: TracerProvider) -> None:
    """Trace with `provider` (tests give one with an in-memory exporter)."""
    global TRACER
    from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor

    instrumentor = AsyncPGInstrumentor()  # type: ignore[no-untyped-call]
    if instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.uninstrument()
    instrumentor.instrument(tracer_provider=provider)
    TRACER = provider.get_tracer(SERVICE_NAME)


def uninstall() -> None:
    global TRACER
    if TRACER is None:
        return
    from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor

    AsyncPGInstrumentor().uninstrument()  # type: ignore[no-untyped-call]
    TRACER = None


def _resource() -> Any:
    from opentelemetry.sdk.resources import Resource

    # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES, when set, take precedence.
    return Resource.create({"service.name": SERVICE_NAME})


def _sampler() -> Any:
    """Parent-based: a span joins its parent's decision. A trace starts at a request or a
    job, never at a database call made outside both (the worker's polling, LISTEN)."""
    from opentelemetry.sdk.trace.sampling import (
        ALWAYS_ON,
        Decision,
        ParentBased,
        Sampler,
        SamplingResult,
    )
    from opentelemetry.trace import SpanKind

    class NoRootClientSpans(Sampler):
        def should_sample(
            self,
            parent_context: Any,
            trace_id: int,
            name: str,
            kind: SpanKind | None = None,
            attributes: Any = None,
            links: Any = None,
            trace_state: Any = None,
        ) -> SamplingResult:
            if kind is SpanKind.CLIENT:
                return SamplingResult(Decision.DROP)
            return ALWAYS_ON.should_sample(
                parent_context, trace_id, name, kind, attributes, links, trace_state
            )

        def get_description(self) -> str:
            return "NoRootClientSpans"

    return ParentBased(root=NoRootClientSpans())


# --- requests -----------------------------------------------------------------------------


async def traced_request(
    tracer: Tracer,
    app: ASGIApp,
    scope: Scope,
    receive: Receive,
    send: Send,
    route_of: Callable[[Scope], str],
) -> None:
    """Run `app` for one HTTP request inside a server span continuing the caller's
    `traceparent`; named by route template once routing has matched."""
    from opentelemetry import propagate
    from opentelemetry.trace import SpanKind, StatusCode

    carrier = {
        name.decode("latin-1"): value.decode("latin-1")
        for name, value in scope["headers"]
        if name in (b"traceparent", b"tracestate")
    }
    method = scope["method"]
    status = 500

    async def send_status(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        await send(message)

    with tracer.start_as_current_span(
        method,
        context=propagate.extract(carrier),
        kind=SpanKind.SERVER,
        attributes={"http.request.method": method, "url.path": scope["path"]},
    ) as span:
        try:
            await app(scope, receive, send_status)
        finally:
            route = route_of(scope)
            span.update_name(f"{method} {route}")
            span.set_attribute("http.route", route)
            span.set_attribute("http.response.status_code", status)
            request_id = scope.get("state", {}).get("request_id")
            if request_id:
                span.set_attribute("request.id", request_id)
            if status >= 500:
                span.set_status(StatusCode.ERROR)


# --- outbox jobs and webhooks -------------------------------------------------------------


def context_carrier() -> dict[str, str]:
    """The current W3C trace context (`traceparent`, `tracestate`); empty when off."""
    if TRACER is None:
        return {}
    from opentelemetry import propagate

    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


def with_trace(payload: dict[str, Any]) -> dict[str, Any]:
    """`payload` carrying the current trace context under TRACE_KEY (unchanged when off)."""
    carrier = context_carrier()
    return {**payload, TRACE_KEY: carrier} if carrier else payload


@contextmanager
def _job_span(tracer: Tracer, topic: str, job_id: int, payload: Mapping[str, Any]) -> Iterator[Any]:
    from opentelemetry import propagate
    from opentelemetry.trace import SpanKind

    carrier = payload.get(TRACE_KEY)
    parent = propagate.extract(carrier) if isinstance(carrier, dict) else None
    with tracer.start_as_current_span(
        f"outbox {topic}",
        context=parent,
        kind=SpanKind.CONSUMER,
        attributes={"messaging.operation.type": "process", "outbox.job_id": job_id},
    ) as span:
        yield span


def job_span(topic: str, job_id: int, payload: Mapping[str, Any]) -> Any:
    """A span for running one outbox job, in the trace of whoever scheduled it."""
    tracer = TRACER
    if tracer is None:
        return nullcontext()
    return _job_span(tracer, topic, job_id, payload)
