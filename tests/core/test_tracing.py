"""Traces of requests: one server span per request, the hot paths included, continuing the
caller's `traceparent`, with the request id and the route, and the database calls as child
spans. Off by default, and then nothing of the SDK is loaded."""

from __future__ import annotations

import subprocess
import sys

import httpx
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from app.core import tracing
from app.core.security import Role
from tests.conftest import MakeUser
from tests.tracing_support import (
    PARENT_SPAN,
    PARENT_TRACE,
    TRACEPARENT,
    ancestors,
    hex_trace,
    spans,
)

__all__ = ["spans"]


async def _one_traced_request(
    client: httpx.AsyncClient, spans: InMemorySpanExporter, path: str, headers: dict[str, str]
) -> None:
    spans.clear()
    response = await client.get(
        path, headers={**headers, "traceparent": TRACEPARENT, "X-Request-ID": "req-trace-1"}
    )
    assert response.status_code in (200, 404), response.text
    finished = spans.get_finished_spans()
    servers = [s for s in finished if s.kind is SpanKind.SERVER]
    assert len(servers) == 1, [s.name for s in finished]
    (server,) = servers
    assert hex_trace(server) == PARENT_TRACE
    assert server.parent is not None and f"{server.parent.span_id:016x}" == PARENT_SPAN
    assert server.attributes is not None
    assert server.attributes["request.id"] == "req-trace-1"
    assert server.attributes["http.response.status_code"] == response.status_code
    assert server.name == f"GET {server.attributes['http.route']}"
    database = [s for s in finished if s.kind is SpanKind.CLIENT]
    assert database, "no database span"
    for span in database:
        assert hex_trace(span) == PARENT_TRACE
        assert server in ancestors(span, finished)
        assert span.attributes and span.attributes.get("db.system") == "postgresql"


async def test_a_hot_path_request_is_one_trace_with_its_database_spans(
    live_client: httpx.AsyncClient, make_live_user: MakeUser, spans: InMemorySpanExporter
) -> None:
    user = await make_live_user(Role.user)
    # GET /codes/{code} is a lean route, answered by the front door.
    await _one_traced_request(live_client, spans, "/api/v1/codes/NO-SUCH-CODE", user.headers)
    (server,) = [s for s in spans.get_finished_spans() if s.kind is SpanKind.SERVER]
    assert server.name == "GET /api/v1/codes/{code}"


async def test_an_ordinary_request_is_one_trace_with_its_database_spans(
    live_client: httpx.AsyncClient, make_live_user: MakeUser, spans: InMemorySpanExporter
) -> None:
    user = await make_live_user(Role.user)
    await _one_traced_request(live_client, spans, "/api/v1/me/codes", user.headers)


async def test_a_request_without_traceparent_starts_a_trace(
    live_client: httpx.AsyncClient, spans: InMemorySpanExporter
) -> None:
    await live_client.get("/readyz")
    (server,) = [s for s in spans.get_finished_spans() if s.kind is SpanKind.SERVER]
    assert server.parent is None
    assert server.name == "GET /readyz"


async def test_off_records_nothing_and_leaves_payloads_alone(
    live_client: httpx.AsyncClient,
) -> None:
    assert tracing.TRACER is None
    payload = {"promo_id": "x"}
    assert tracing.with_trace(payload) is payload
    assert tracing.context_carrier() == {}
    response = await live_client.get("/healthz", headers={"traceparent": TRACEPARENT})
    assert response.status_code == 200


def test_off_the_sdk_is_never_imported() -> None:
    code = (
        "import sys\n"
        "from app.core.settings import Settings\n"
        "from app.main import create_app\n"
        "create_app(Settings(env='test', jwt_secret='x' * 40, _env_file=None))\n"
        "import app.notifications.worker\n"
        "loaded = [m for m in sys.modules if m.startswith(('opentelemetry.sdk',"
        " 'opentelemetry.instrumentation', 'opentelemetry.exporter'))]\n"
        "assert not loaded, loaded\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
