"""The notifications worker: runs the outbox jobs of notifications, a promo's fan-out
(`promo.started`, scheduled by promos) and webhook delivery (`webhook.deliver`, queued by the
fan-out). The outbox itself (`app/core/outbox.py`) is generic; this loop lives here because
most topics it runs are notification work (docs/decisions.md). It also runs the books'
import jobs (`books.import`: `app/books/import_runner.py`), on every poll retires a
bounded batch of lapsed promo holds (`promos.reservations.retire_lapsed_holds`), and every
`SEAL_SECONDS` seals the redemption history and the purchase log (`app/core/chain.py`).

Any number of workers may run (`python -m app worker`, or inside the API process unless
`RUN_WORKER=false`). Jobs are claimed with `FOR UPDATE SKIP LOCKED`; a worker sleeps until a
NOTIFY on `outbox`, the next scheduled `run_at`, or the polling interval, whichever is first.
Every connection of a worker carries `application_name = "couponflash-worker <id>"`, so a
worker that died (SIGKILL, lost host) is noticed as soon as its connections are gone and
its running jobs go back to `pending`; a lease on `locked_at` covers what that cannot see.
On shutdown the worker stops claiming, lets jobs finish for a grace period (a fan-out or an
import job stops at its next batch boundary), and hands back whatever is still unfinished.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import structlog

from app.audit.ledgers import LEDGERS
from app.auth import refresh
from app.books import import_jobs, import_runner
from app.core import chain, idempotency, lockout, outbox, tracing
from app.core.chain import Sealer
from app.core.db import libpq_url
from app.core.outbox import Job
from app.core.settings import Settings
from app.notifications import fanout
from app.notifications.config import NotificationSettings, direct_url
from app.notifications.fanout import LostLease, NotYet, Released, run_fanout
from app.notifications.metrics import DEAD, DELIVERED, FAILED, JOBS, OUTBOX_LAG
from app.notifications.webhook import (
    WEBHOOK_DELIVER,
    WebhookSender,
    backoff_seconds,
    build_body,
)
from app.promos import soldout
from app.promos.events import PROMO_STARTED
from app.promos.reservations import retire_lapsed_holds

log = structlog.get_logger(__name__)

APP_PREFIX = "couponflash-worker "
# Housekeeping: deletions past their retention every 10 minutes (sooner while a round still
# finds a full batch), the sold-out marks every 10 seconds. Each round is bounded.
_PURGE_EVERY_S = 600.0
_MARK_SOLD_OUT_EVERY_S = 10.0
# Lapsed promo holds retired per poll at most: one short statement, by index.
_HOLDS_PER_SWEEP = 1000
# Finished import jobs deleted per housekeeping round, each with its staging table.
_IMPORTS_PER_PURGE = 50


@dataclass(frozen=True)
class WorkerConfig:
    database_url: str
    direct_url: str
    webhook_url: str | None = None
    webhook_secret: str | None = None
    concurrency: int = 8
    poll_seconds: float = 2.0
    lease_seconds: float = 60.0
    shutdown_grace_seconds: float = 10.0
    batch_size: int = 1000
    webhook_timeout_s: float = 10.0
    webhook_max_attempts: int = 8
    backoff_base_s: float = 2.0
    backoff_max_s: float = 600.0
    keep_done_hours: float = 72.0
    import_batch_size: int = 100_000
    import_keep_hours: float = 72.0
    idempotency_ttl_hours: int = 24
    lockout_window_seconds: int = 600
    seal_seconds: float = 1.0
    purge_batch: int = 5000
    statement_cache_size: int = 1024

    @classmethod
    def from_settings(
        cls, settings: Settings, tuning: NotificationSettings | None = None
    ) -> WorkerConfig:
        tuning = tuning or settings.notifications
        url = settings.database_url
        if not url:
            raise RuntimeError("DATABASE_URL is not set")
        return cls(
            database_url=libpq_url(url),
            direct_url=libpq_url(direct_url(settings) or url),
            webhook_url=settings.notify_webhook_url,
            webhook_secret=settings.notify_webhook_secret,
            concurrency=tuning.worker_concurrency,
            poll_seconds=tuning.worker_poll_seconds,
            lease_seconds=tuning.worker_lease_seconds,
            shutdown_grace_seconds=tuning.worker_shutdown_grace_seconds,
            batch_size=tuning.notify_batch_size,
            webhook_timeout_s=tuning.notify_webhook_timeout_s,
            webhook_max_attempts=tuning.notify_webhook_max_attempts,
            backoff_base_s=tuning.notify_backoff_base_s,
            backoff_max_s=tuning.notify_backoff_max_s,
            keep_done_hours=tuning.outbox_keep_done_hours,
            import_batch_size=tuning.import_batch_size,
            import_keep_hours=tuning.import_keep_hours,
            idempotency_ttl_hours=settings.idempotency_ttl_hours,
            lockout_window_seconds=settings.lockout_window_seconds,
            seal_seconds=settings.seal_seconds,
            statement_cache_size=settings.statement_cache_size,
        )


def new_worker_id() -> str:
    # application_name keeps 63 bytes: keep the id short.
    return f"{socket.gethostname()[:20]}:{os.getpid()}:{secrets.token_hex(3)}"


class Worker:
    def __init__(self, config: WorkerConfig, worker_id: str | None = None) -> None:
        self.config = config
        self.id = worker_id or new_worker_id()
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()
        self._listening = asyncio.Event()
        self._tasks: dict[asyncio.Task[None], Job] = {}
        self._pool: asyncpg.Pool | None = None
        self._webhook: WebhookSender | None = None
        # Not notification work: the loop on a timer runs them, one per sealed log.
        self._sealers = [Sealer(ledger) for ledger in LEDGERS]
        # The topics this worker runs; a job of any other topic becomes a dead letter.
        self._handlers: dict[str, Callable[[Job], Awaitable[None]]] = {
            PROMO_STARTED: self._fanout,
            WEBHOOK_DELIVER: self._deliver,
            import_jobs.TOPIC: self._import,
        }

    @property
    def application_name(self) -> str:
        return APP_PREFIX + self.id

    def stop(self) -> None:
        """Ask the loop to finish: no new claims; running jobs finish or are handed back."""
        self._stop.set()
        self._wake.set()

    def _stopping(self) -> bool:
        return self._stop.is_set()

    async def _connect_pool(self) -> asyncpg.Pool | None:
        """The job pool, retried with backoff while the database is away (None if stopped)."""
        cfg = self.config
        delay = 0.5
        while not self._stop.is_set():
            try:
                # Direct, like LISTEN: a job's liveness is its worker's `application_name`
                # in pg_stat_activity, which a transaction pooler would hide.
                pool: asyncpg.Pool = await asyncpg.create_pool(
                    cfg.direct_url,
                    min_size=1,
                    max_size=cfg.concurrency + 2,
                    max_inactive_connection_lifetime=0,  # one connection says we are alive
                    statement_cache_size=cfg.statement_cache_size,
                    server_settings={"application_name": self.application_name},
                )
                return pool
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("worker_connect_failed", error=f"{type(exc).__name__}: {exc}")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), timeout=delay)
                delay = min(delay * 2, 10.0)
        return None

    async def run(self) -> None:
        cfg = self.config
        self._pool = await self._connect_pool()
        if self._pool is None:
            return
        self._webhook = WebhookSender(cfg.webhook_url, cfg.webhook_secret, cfg.webhook_timeout_s)
        listener = asyncio.create_task(self._listen(), name="outbox-listener")
        log.info("worker_started", worker=self.id, concurrency=cfg.concurrency)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._listening.wait(), timeout=5)
            await self._loop()
        finally:
            await self._drain()
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await listener
            await self._webhook.aclose()
            await self._pool.close()
            log.info("worker_stopped", worker=self.id)

    # The loop ----------------------------------------------------------------------------

    async def _loop(self) -> None:
        assert self._pool is not None
        cfg = self.config
        loop = asyncio.get_running_loop()
        last_recover = last_purge = last_mark = last_seal = float("-inf")
        purge_every = _PURGE_EVERY_S
        sealing_behind = False
        while not self._stop.is_set():
            self._wake.clear()
            timeout = min(cfg.poll_seconds, cfg.seal_seconds)
            try:
                async with self._pool.acquire() as conn:
                    now = loop.time()
                    if now - last_recover >= cfg.poll_seconds:
                        last_recover = now
                        recovered = await outbox.recover_orphans(
                            conn, APP_PREFIX, cfg.lease_seconds
                        )
                        if recovered:
                            log.warning("outbox_jobs_recovered", count=recovered)
                        # Not notification work, but this is the loop that runs on a timer.
                        await retire_lapsed_holds(conn, _HOLDS_PER_SWEEP)
                    if now - last_purge >= purge_every:
                        last_purge = now
                        behind = await purge(conn, cfg)
                        purge_every = cfg.poll_seconds if behind else _PURGE_EVERY_S
                    if sealing_behind or now - last_seal >= cfg.seal_seconds:
                        last_seal = now
                        sealing_behind = await chain.seal(conn, self._sealers, cfg.seal_seconds)
                        if sealing_behind:
                            timeout = 0
                    if now - last_mark >= _MARK_SOLD_OUT_EVERY_S:
                        last_mark = now
                        await soldout.mark_sold_out(conn, cfg.purge_batch)
                    free = cfg.concurrency - len(self._tasks)
                    jobs = await outbox.claim(conn, self.id, free) if free > 0 else []
                    for job in jobs:
                        self._spawn(job)
                    if jobs and len(jobs) < free:
                        continue  # maybe more became due meanwhile; the next claim says
                    if free > len(jobs):
                        lag, next_in = await outbox.due_state(conn)
                        OUTBOX_LAG.set(lag)
                        if next_in is not None:
                            timeout = min(timeout, max(next_in, 0.005))
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("worker_db_error", error=f"{type(exc).__name__}: {exc}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=timeout)

    def _spawn(self, job: Job) -> None:
        task = asyncio.create_task(self._run_job(job), name=f"job-{job.id}")
        self._tasks[task] = job

        def done(t: asyncio.Task[None]) -> None:
            self._tasks.pop(t, None)
            self._wake.set()

        task.add_done_callback(done)

    async def _drain(self) -> None:
        if not self._tasks:
            return
        _, pending = await asyncio.wait(
            set(self._tasks), timeout=self.config.shutdown_grace_seconds
        )
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=5)

    # Jobs --------------------------------------------------------------------------------

    async def _run_job(self, job: Job) -> None:
        assert self._pool is not None
        # Notifications a webhook job carries, for the delivery counters.
        size = len(job.payload.get("ids", [])) if job.topic == WEBHOOK_DELIVER else 0
        handler = self._handlers.get(job.topic)
        try:
            if handler is None:
                job = Job(job.id, job.topic, job.payload, job.max_attempts, job.max_attempts)
                raise ValueError(f"unknown topic {job.topic!r}")
            with tracing.job_span(job.topic, job.id, job.payload):
                await handler(job)
        except Released:
            await self._finish(outbox.release, job.id, self.id)
            JOBS.labels(job.topic, "released").inc()
        except LostLease:
            log.warning("outbox_job_lost", job=job.id, topic=job.topic)
        except NotYet as later:
            await self._finish(outbox.reschedule, job.id, self.id, later.at)
        except asyncio.CancelledError:
            await asyncio.shield(self._finish(outbox.release, job.id, self.id))
            raise
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            delay = backoff_seconds(
                job.attempts, self.config.backoff_base_s, self.config.backoff_max_s
            )
            dead = await self._finish(outbox.fail, job, self.id, error, delay)
            FAILED.inc(size)
            JOBS.labels(job.topic, "dead" if dead else "failed").inc()
            if dead:
                DEAD.inc(size)
            log.warning(
                "outbox_job_failed",
                job=job.id,
                topic=job.topic,
                attempt=job.attempts,
                dead=dead,
                error=error,
                retry_in_s=None if dead else round(delay, 3),
            )
        else:
            await self._finish(outbox.complete, job.id, self.id)
            JOBS.labels(job.topic, "done").inc()
            if job.topic == WEBHOOK_DELIVER:
                DELIVERED.inc(size)

    async def _finish(self, fn: Any, *args: Any) -> Any:
        """Record a job's outcome; a database hiccup here leaves it to orphan recovery."""
        assert self._pool is not None
        try:
            async with self._pool.acquire() as conn:
                return await fn(conn, *args)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("outbox_finish_failed", error=f"{type(exc).__name__}: {exc}")
            return None

    async def _fanout(self, job: Job) -> None:
        assert self._pool is not None and self._webhook is not None
        await run_fanout(
            self._pool,
            job,
            self.id,
            batch_size=self.config.batch_size,
            webhook=self._webhook.enabled,
            webhook_max_attempts=self.config.webhook_max_attempts,
            stopping=self._stopping,
        )

    async def _deliver(self, job: Job) -> None:
        assert self._pool is not None and self._webhook is not None
        async with self._pool.acquire() as conn:  # released before the POST
            body, count = await build_body(conn, job)
        if count:
            await self._webhook.post(job, body)

    async def _import(self, job: Job) -> None:
        assert self._pool is not None
        import_id = uuid.UUID(str(job.payload["import_id"]))
        try:
            outcome = await import_runner.run(
                self._pool,
                import_id,
                job.id,
                self.id,
                batch_size=self.config.import_batch_size,
                stopping=self._stopping,
            )
        except Exception as exc:
            if job.attempts >= job.max_attempts:  # no attempt left: the job ends here
                await self._finish(
                    import_runner.mark_failed, import_id, f"{type(exc).__name__}: {exc}"
                )
            raise
        if outcome is import_runner.Outcome.BUSY:
            raise NotYet(datetime.now(UTC) + timedelta(seconds=import_runner.BUSY_RETRY_S))
        if outcome is import_runner.Outcome.RELEASED:
            raise Released()
        if outcome is import_runner.Outcome.LOST:
            raise LostLease()

    # Wake-ups ----------------------------------------------------------------------------

    def _on_notify(self, *_: object) -> None:
        self._wake.set()

    async def _listen(self) -> None:
        """LISTEN on a direct connection; reconnect with backoff; polling covers the gaps."""
        delay = 0.5
        while not self._stop.is_set():
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(
                    self.config.direct_url,
                    server_settings={"application_name": self.application_name},
                )
                await conn.add_listener(outbox.CHANNEL, self._on_notify)
                self._listening.set()
                self._wake.set()  # catch up on anything sent while we were away
                delay = 0.5
                while not self._stop.is_set() and not conn.is_closed():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stop.wait(), timeout=self.config.poll_seconds)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("outbox_listen_failed", error=f"{type(exc).__name__}: {exc}")
            finally:
                self._listening.clear()
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(conn.close(), timeout=2)
            if not self._stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), timeout=delay)
                delay = min(delay * 2, 10.0)


async def purge(conn: outbox.Conn, cfg: WorkerConfig) -> bool:
    """One bounded round of deletions past their retention (finished jobs, expired
    idempotency keys, audiences of finished fan-outs, lockout windows past, expired refresh
    tokens), each at most `purge_batch` rows in its own short statement. True when some kind
    filled its batch: there is more to delete."""
    counts = {
        "outbox_jobs": await outbox.purge_finished(
            conn, cfg.keep_done_hours * 3600, cfg.purge_batch
        ),
        "idempotency_keys": await idempotency.purge_expired(
            conn, cfg.idempotency_ttl_hours, cfg.purge_batch
        ),
        "audience_rows": await fanout.purge_audience(
            conn, cfg.keep_done_hours * 3600, cfg.purge_batch
        ),
        "lockouts": await lockout.purge_expired(conn, cfg.lockout_window_seconds, cfg.purge_batch),
        "refresh_tokens": await refresh.purge_expired(conn, cfg.purge_batch),
    }
    # Each import job may drop a staging table: fewer per round.
    jobs = await import_runner.purge_finished(
        conn, cfg.import_keep_hours * 3600, _IMPORTS_PER_PURGE
    )
    if any(counts.values()) or jobs:
        log.info("housekeeping_purged", import_jobs=jobs, **counts)
    return jobs >= _IMPORTS_PER_PURGE or any(n >= cfg.purge_batch for n in counts.values())


WORKER_STATE_KEY = "outbox_worker"  # the in-process worker, in the lifespan's state


@asynccontextmanager
async def start_worker(
    settings: Settings, tuning: NotificationSettings | None = None
) -> AsyncIterator[Worker | None]:
    """For the API lifespan: run a worker in this process when `RUN_WORKER` is true (None
    otherwise), and on the way out stop it gracefully (running jobs finish or are handed
    back)."""
    if not (settings.run_worker and settings.database_url):
        yield None
        return
    worker = Worker(WorkerConfig.from_settings(settings, tuning))
    task = asyncio.create_task(worker.run(), name="outbox-worker")
    try:
        yield worker
    finally:
        worker.stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, timeout=worker.config.shutdown_grace_seconds + 10)


async def run_until_signalled(config: WorkerConfig) -> None:
    """Standalone process: run until SIGTERM or SIGINT, then shut down gracefully."""
    import signal

    worker = Worker(config)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.stop)
    await worker.run()
