"""Prometheus metrics of notifications and the outbox (exposed on `/metrics`)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

from app.core.metrics import REGISTRY

CREATED = Counter(
    "notifications_created_total", "Inbox notifications created by fan-outs.", registry=REGISTRY
)
DELIVERED = Counter(
    "notifications_delivered_total",
    "Notifications accepted by the webhook (2xx).",
    registry=REGISTRY,
)
FAILED = Counter(
    "notifications_failed_total",
    "Notifications in webhook attempts that failed (each attempt counts).",
    registry=REGISTRY,
)
DEAD = Counter(
    "notifications_dead_total",
    "Notifications in webhook batches that exhausted their attempts (dead letters).",
    registry=REGISTRY,
)
JOBS = Counter(
    "outbox_jobs_total",
    "Outbox jobs finished, by topic and outcome.",
    ["topic", "outcome"],
    registry=REGISTRY,
)
# Every worker loop sees the same outbox: across processes, the latest look counts.
OUTBOX_LAG = Gauge(
    "outbox_lag_seconds",
    "Age of the oldest due pending outbox job, as last seen by a worker.",
    registry=REGISTRY,
    multiprocess_mode="mostrecent",
)
