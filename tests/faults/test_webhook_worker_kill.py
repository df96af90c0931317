"""The outbox worker killed with SIGKILL while webhook batches are in flight: two promos fan
out in batches and queue one signed webhook per batch to a slow receiver; the kill lands
while several batches wait for the receiver's answer. A restarted worker takes the orphaned
jobs back and delivers them again: every eligible user reaches the receiver at least once
and the inbox exactly once, and a duplicate carries the same notification id (the
receiver's dedupe key)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter, defaultdict

import asyncpg

from tests.faults.harness import (
    Cluster,
    Tally,
    WebhookSink,
    announce,
    check_invariants,
    outbox_worker,
    random_place,
    seed_promo,
    seed_users,
)
from tests.helpers import wait_for

AUDIENCE = 600  # per promo
PROMOS = 2
BATCH = 50
SECRET = "fault-webhook-secret"
SLOW_S = 1.0  # the receiver's answer time until the kill
FAST_S = 0.05  # and afterwards
IN_FLIGHT = 4  # batches waiting for the receiver when the worker is killed
ENV = {
    "NOTIFY_BATCH_SIZE": str(BATCH),
    "NOTIFY_WEBHOOK_SECRET": SECRET,
    "NOTIFY_WEBHOOK_TIMEOUT_S": "10",
    "NOTIFY_BACKOFF_BASE_S": "0.1",
    "NOTIFY_BACKOFF_MAX_S": "0.5",
    "WORKER_CONCURRENCY": "8",
    "WORKER_LEASE_SECONDS": "30",
}


async def _settled(pg: asyncpg.Connection, promos: list[uuid.UUID]) -> bool:
    """Every fan-out done and every webhook job of these promos finished."""
    row = await pg.fetchrow(
        "SELECT (SELECT count(*) FROM notification_fanouts WHERE promo_id = ANY($1)"
        " AND status = 'done') AS done,"
        " (SELECT count(*) FROM outbox WHERE topic = 'webhook.deliver'"
        " AND payload ->> 'promo_id' = ANY($2) AND status IN ('pending', 'running')) AS open",
        promos,
        [str(p) for p in promos],
    )
    assert row is not None
    return bool(row["done"] == len(promos) and row["open"] == 0)


async def test_worker_killed_mid_webhook_batch(cluster: Cluster, pg: asyncpg.Connection) -> None:
    audiences, promos = [], []
    for _ in range(PROMOS):
        place = random_place()
        audiences += await seed_users(pg, AUDIENCE, at=place)
        promos.append(await seed_promo(pg, 10, at=place))
    eligible = {str(u.id) for u in audiences}
    tally = Tally("webhook worker SIGKILL")
    async with WebhookSink(SECRET, SLOW_S) as sink:
        env = {**ENV, "NOTIFY_WEBHOOK_URL": sink.url}
        with outbox_worker(cluster, env=env) as first:
            for promo in promos:
                await announce(pg, promo)
            await wait_for(
                lambda: sink.in_flight() >= IN_FLIGHT,
                timeout=60,
                what=f"{IN_FLIGHT} batches in flight at the receiver",
            )
            first.proc.kill()
            killed = time.monotonic()
            await asyncio.to_thread(first.proc.wait, 10)
        in_flight = [d for d in sink.deliveries if d.answered is None]
        progress = await pg.fetch(
            "SELECT status, notified FROM notification_fanouts WHERE promo_id = ANY($1)", promos
        )
        sink.delay = FAST_S
        restarted = time.monotonic()
        with outbox_worker(cluster, env=env) as second:
            await wait_for(lambda: _settled(pg, promos), timeout=90, what="everything delivered")
            settled_s = time.monotonic() - restarted
        worker_logs = first.log_text() + second.log_text()

    # Every POST the receiver got: answered to a live worker (ok) or sent by the first
    # worker and not answered before it died (it never learned the outcome: unknown).
    for d in sink.deliveries:
        if d.received < restarted and (d.answered is None or d.answered > killed):
            tally.unknown += 1
            tally.statuses["cut by the kill"] += 1
        else:
            tally.ok += 1
            tally.statuses["200"] += 1
    per_id = Counter(i for d in sink.deliveries for i in d.ids)
    duplicated = {i: n for i, n in per_id.items() if n > 1}
    batches = Counter(d.batch_id for d in sink.deliveries)
    tally.report(
        kills=1,
        in_flight_at_kill=len(in_flight),
        fanout_at_kill=[(r["status"], r["notified"]) for r in progress],
        batches=len(batches),
        batches_redelivered=sum(1 for n in batches.values() if n > 1),
        notifications_delivered=sum(per_id.values()),
        duplicates=sum(n - 1 for n in duplicated.values()),
        settled_after_restart_s=f"{settled_s:.1f}",
        orphans_recovered=worker_logs.count("outbox_jobs_recovered"),
    )
    assert not tally.bad
    assert all(d.signed for d in sink.deliveries), "a delivery's signature did not verify"
    assert "Traceback" not in worker_logs, worker_logs[-2000:]

    # The inbox: exactly one notification per eligible user.
    rows = await pg.fetch(
        "SELECT id, user_id::text FROM notifications WHERE user_id = ANY($1)",
        [u.id for u in audiences],
    )
    inbox: dict[str, list[int]] = defaultdict(list)
    for r in rows:
        inbox[r["user_id"]].append(r["id"])
    assert set(inbox) == eligible, f"{len(eligible - set(inbox))} users have no notification"
    assert all(len(ids) == 1 for ids in inbox.values()), "a user has two notifications"
    # The receiver: every eligible user at least once, always under the inbox row's id.
    delivered: dict[str, set[int]] = defaultdict(set)
    for d in sink.deliveries:
        for notification, user in d.users.items():
            delivered[user].add(notification)
    assert set(delivered) == eligible, f"{len(eligible - set(delivered))} users never delivered"
    assert all(delivered[u] == set(inbox[u]) for u in eligible), "a duplicate has another id"
    # A redelivered batch is the same batch: same job id, same notifications, later attempt.
    by_batch: dict[int, list[tuple[int, list[int]]]] = defaultdict(list)
    for d in sink.deliveries:
        by_batch[d.batch_id].append((d.attempt, d.ids))
    for batch, sends in by_batch.items():
        assert len({tuple(ids) for _, ids in sends}) == 1, f"batch {batch} changed"
        assert sorted(a for a, _ in sends) == [a for a, _ in sends], f"batch {batch} attempts"
    # The kill landed mid batch: those batches were delivered again after the restart.
    assert in_flight, "no batch was in flight when the worker died"
    assert {d.batch_id for d in in_flight} <= {b for b, n in batches.items() if n > 1}
    dead = await pg.fetchval(
        "SELECT count(*) FROM outbox WHERE payload ->> 'promo_id' = ANY($1) AND status = 'dead'",
        [str(p) for p in promos],
    )
    assert dead == 0
    print(
        f"[fault] webhook worker SIGKILL: {len(eligible)} eligible users, each once in the"
        f" inbox and at least once at the receiver; {len(duplicated)} notifications delivered"
        f" twice or more ({sum(n - 1 for n in duplicated.values())} duplicate deliveries),"
        " each duplicate under its inbox id",
        flush=True,
    )
    await check_invariants(cluster.url)
