"""Prometheus metrics: HTTP by route template, requests in flight, DB pool gauges, the
database's view (reachable, outbox depth and age, lock waits) and domain counters.

One process (`WORKERS=1`) keeps every value in memory and `/metrics` reads `REGISTRY`. Several
uvicorn processes behind one port run in prometheus_client's multi-process mode: the launcher
points `PROMETHEUS_MULTIPROC_DIR` at a fresh directory before the workers start
(app/core/metrics_processes.py), counters and histograms then write to per-process mmap'd
files, and a scrape, whichever process takes it, reads all of them. Gauges say how processes
combine: the ones read at scrape time (in flight, pools) are copied into each process's own
file every second and summed over live processes (`livesum`); the database's view, sampled by
whichever process is scraped, is the most recent sample (`mostrecent`)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, values
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy import text
from sqlalchemy.pool import QueuePool

if TYPE_CHECKING:
    from app.core.db import Database

# prometheus_client chose its value class when it was imported, from PROMETHEUS_MULTIPROC_DIR:
# the same test here, so the two never disagree.
MULTIPROCESS: bool = getattr(values.ValueClass, "_multiprocess", False)

REGISTRY = CollectorRegistry(auto_describe=True)

HTTP_REQUESTS = Counter(
    "http_requests_total",
    "HTTP requests by method, route template and status.",
    ["method", "route", "status"],
    registry=REGISTRY,
)
HTTP_LATENCY = Histogram(
    "http_request_duration_seconds",
    "HTTP request latency by method and route template.",
    ["method", "route"],
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=REGISTRY,
)

COALESCED_BATCH = Histogram(
    "coalesced_batch_size",
    "Requests per coalesced batch of a hot path (one transaction each).",
    ["path"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
    registry=REGISTRY,
)


def batch_observer(path: str) -> Callable[[int], None]:
    """Records the size of each batch of `path` in `coalesced_batch_size`."""
    return COALESCED_BATCH.labels(path).observe


_HTTP_CHILDREN: dict[tuple[str, str, int], tuple[Any, Any]] = {}


def record_request(method: str, route: str, status: int, seconds: float) -> None:
    """Count one request and its latency. The labelled children are looked up once per
    (method, route, status): `labels()` takes a lock and builds the key every call."""
    children = _HTTP_CHILDREN.get((method, route, status))
    if children is None:
        children = (
            HTTP_REQUESTS.labels(method, route, str(status)),
            HTTP_LATENCY.labels(method, route),
        )
        _HTTP_CHILDREN[(method, route, status)] = children
    children[0].inc()
    children[1].observe(seconds)


class InFlight(Collector):
    """Requests being answered by this process, server-sent event streams apart (they stay
    open for minutes and would read as load). A plain integer that the middleware bumps,
    read at scrape time: no lock per request. The autoscaler's custom metric."""

    def __init__(self) -> None:
        self.requests = 0
        self.streams = 0

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(
            "http_requests_in_flight",
            "HTTP requests being answered by this process (event streams excluded).",
            value=self.requests,
        )
        yield GaugeMetricFamily(
            "http_event_streams_open",
            "Server-sent event streams open on this process.",
            value=self.streams,
        )


IN_FLIGHT = InFlight()
REGISTRY.register(IN_FLIGHT)


class PoolCollector(Collector):
    """Reads both pools at scrape time, so it costs nothing per request: `orm`
    (SQLAlchemy's) and `hot` (the asyncpg pool of the hot paths)."""

    def __init__(self) -> None:
        self.db: Database | None = None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        gauge = GaugeMetricFamily(
            "db_pool_connections",
            "DB pool connections by pool and state.",
            labels=["pool", "state"],
        )
        db = self.db
        pool = db.engine.pool if db is not None else None
        if isinstance(pool, QueuePool):
            gauge.add_metric(["orm", "checked_out"], pool.checkedout())
            gauge.add_metric(["orm", "idle"], pool.checkedin())
            gauge.add_metric(["orm", "overflow"], max(pool.overflow(), 0))
            gauge.add_metric(["orm", "size"], pool.size())
        hot = db.pool if db is not None else None
        if hot is not None:
            size, idle = hot.get_size(), hot.get_idle_size()
            gauge.add_metric(["hot", "checked_out"], size - idle)
            gauge.add_metric(["hot", "idle"], idle)
            gauge.add_metric(["hot", "size"], hot.get_max_size())
            gauge.add_metric(["hot", "waiting"], _hot_waiting(hot))
        yield gauge


def _hot_waiting(pool: Any) -> int:
    """Requests waiting for a connection of the asyncpg pool: the getters of its internal
    queue (asyncpg 0.30 to 0.32 keep idle holders in `_queue`, an asyncio.LifoQueue), read at
    scrape time only. 0 when the attribute is not there."""
    queue = getattr(pool, "_queue", None)
    getters = getattr(queue, "_getters", ())
    return sum(1 for waiter in getters if not waiter.done())


POOL = PoolCollector()
REGISTRY.register(POOL)


# The database's view, the same whichever process samples it: across processes, the latest
# sample counts.
DB_UP = Gauge(
    "db_up",
    "1 when the last scrape reached the database, else 0.",
    registry=REGISTRY,
    multiprocess_mode="mostrecent",
)
OUTBOX_PENDING = Gauge(
    "outbox_pending_jobs",
    "Outbox jobs waiting to run (due or not).",
    registry=REGISTRY,
    multiprocess_mode="mostrecent",
)
OUTBOX_OLDEST = Gauge(
    "outbox_oldest_pending_age_seconds",
    "Age of the oldest outbox job that is due and not yet taken (0 when none).",
    registry=REGISTRY,
    multiprocess_mode="mostrecent",
)
OUTBOX_DEAD = Gauge(
    "outbox_dead_jobs",
    "Outbox jobs that exhausted their attempts.",
    registry=REGISTRY,
    multiprocess_mode="mostrecent",
)
LOCK_WAITS = Gauge(
    "db_lock_waits",
    "Sessions of this database waiting for a lock (row, advisory or table).",
    registry=REGISTRY,
    multiprocess_mode="mostrecent",
)

_DATABASE_SAMPLE = text(
    """
    SELECT
      (SELECT count(*) FROM outbox WHERE status = 'pending') AS pending,
      (SELECT count(*) FROM outbox WHERE status = 'dead') AS dead,
      (SELECT coalesce(extract(epoch FROM now() - min(run_at)), 0)
         FROM outbox WHERE status = 'pending' AND run_at <= now()) AS oldest,
      (SELECT count(*) FROM pg_locks
         WHERE NOT granted
           AND database = (SELECT oid FROM pg_database WHERE datname = current_database()))
        AS lock_waits
    """
)
_SAMPLE_EVERY_S = 5.0
_sampled_at = 0.0


async def sample_database(db: Database, timeout_s: float = 2.0) -> None:
    """Refresh the database's gauges, at most every few seconds whoever scrapes (several
    Prometheus replicas, the adapter). An unreachable database sets `db_up` to 0 and leaves
    the other gauges as last seen; the scrape itself always answers."""
    global _sampled_at
    now = time.monotonic()
    if now - _sampled_at < _SAMPLE_EVERY_S:
        return
    _sampled_at = now
    try:
        async with asyncio.timeout(timeout_s), db.engine.connect() as conn:
            row = (await conn.execute(_DATABASE_SAMPLE)).one()
    except Exception:
        DB_UP.set(0)
        return
    DB_UP.set(1)
    OUTBOX_PENDING.set(row.pending)
    OUTBOX_DEAD.set(row.dead)
    OUTBOX_OLDEST.set(float(row.oldest))
    LOCK_WAITS.set(row.lock_waits)


def reset_database_sample() -> None:
    """The next scrape samples the database again (tests)."""
    global _sampled_at
    _sampled_at = 0.0


# --- several processes -------------------------------------------------------------------

PUBLISH_EVERY_S = 1.0


class ProcessGauges:
    """Multi-process mode: this process's scrape-time gauges (requests in flight, event
    streams, both pools) copied into its own file, so that the process answering a scrape
    can add them up. Copied every `PUBLISH_EVERY_S` and right before a scrape; requests keep
    bumping plain integers. `livesum`: the file of a process that died is removed by the
    launcher (`mark_process_dead`), so its last values stop counting at once."""

    def __init__(self) -> None:
        self.in_flight = Gauge(
            "http_requests_in_flight",
            "HTTP requests being answered (event streams excluded), summed over processes.",
            registry=None,
            multiprocess_mode="livesum",
        )
        self.streams = Gauge(
            "http_event_streams_open",
            "Server-sent event streams open, summed over processes.",
            registry=None,
            multiprocess_mode="livesum",
        )
        self.pools = Gauge(
            "db_pool_connections",
            "DB pool connections by pool and state, summed over processes.",
            ["pool", "state"],
            registry=None,
            multiprocess_mode="livesum",
        )

    def publish(self) -> None:
        self.in_flight.set(IN_FLIGHT.requests)
        self.streams.set(IN_FLIGHT.streams)
        for family in POOL.collect():
            for sample in family.samples:
                self.pools.labels(sample.labels["pool"], sample.labels["state"]).set(sample.value)


PROCESS_GAUGES = ProcessGauges() if MULTIPROCESS else None


@contextlib.asynccontextmanager
async def publishing(every_s: float = PUBLISH_EVERY_S) -> AsyncIterator[None]:
    """While the block runs, copy this process's gauges into its file every `every_s`
    (multi-process mode; nothing otherwise)."""
    gauges = PROCESS_GAUGES
    if gauges is None:
        yield
        return

    async def loop() -> None:
        while True:
            gauges.publish()
            await asyncio.sleep(every_s)

    task = asyncio.create_task(loop(), name="metrics-publish")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


_MULTIPROCESS_REGISTRY: CollectorRegistry | None = None


def exposition_registry() -> CollectorRegistry:
    """What `/metrics` reads: `REGISTRY`, or in multi-process mode every process's files."""
    global _MULTIPROCESS_REGISTRY
    if not MULTIPROCESS:
        return REGISTRY
    if _MULTIPROCESS_REGISTRY is None:
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        _MULTIPROCESS_REGISTRY = registry
    return _MULTIPROCESS_REGISTRY


def exposition() -> bytes:
    """The Prometheus text of every metric: this process's, or all processes' together."""
    if PROCESS_GAUGES is not None:
        PROCESS_GAUGES.publish()
    return generate_latest(exposition_registry())
