"""Prometheus metrics: HTTP by route template, DB pool gauges, and domain counters."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy.pool import QueuePool

if TYPE_CHECKING:
    from app.core.db import Database

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
        yield gauge


POOL = PoolCollector()
REGISTRY.register(POOL)
