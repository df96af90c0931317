"""Webhook channel: batches of notifications POSTed as signed JSON.

The body carries every notification's `id`, the receiver's dedupe key: delivery is
at-least-once (a worker may die after the POST and before recording it). The signature
header is `X-Signature: sha256=<hex HMAC-SHA256 of the raw body with NOTIFY_WEBHOOK_SECRET>`.
Push providers (FCM, APNs) plug in behind this same interface: a receiver of these batches.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import random
import uuid
from http.cookiejar import CookieJar, DefaultCookiePolicy

import httpx

from app.core import tracing
from app.core.outbox import Conn, Job

# The outbox topic of a batch to deliver (payload: the promo and the notification ids).
WEBHOOK_DELIVER = "webhook.deliver"
SIGNATURE_HEADER = "X-Signature"

# The body is built by PostgreSQL (json_agg in C) and reaches Python as one string: the worker
# only signs and sends it, which keeps its event loop free for the fan-out running beside it.
_BODY = """
WITH rows AS MATERIALIZED (
    SELECT n.id, n.user_id, n.promo_id, n.day, n.created_at
    FROM notifications n WHERE n.id = ANY($1::bigint[])
)
SELECT (SELECT count(*) FROM rows) AS count,
       json_build_object(
           'event', 'promo.started',
           'batch_id', $2::bigint,
           'attempt', $3::integer,
           'sent_at', to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
           'promo', (
               SELECT json_build_object(
                   'id', p.id, 'title', p.title,
                   'starts_at', to_char(p.starts_at AT TIME ZONE 'UTC',
                                        'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
                   'ends_at', to_char(p.ends_at AT TIME ZONE 'UTC',
                                      'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
                   'promo_price_cents', p.promo_price_cents,
                   'store', json_build_object('id', s.id, 'name', s.name))
               FROM promos p
               JOIN products pr ON pr.id = p.product_id
               JOIN stores s ON s.id = pr.store_id
               WHERE p.id = $4),
           'notifications', coalesce((
               SELECT json_agg(json_build_object(
                   'id', r.id, 'user_id', r.user_id, 'promo_id', r.promo_id, 'day', r.day,
                   'created_at', to_char(r.created_at AT TIME ZONE 'UTC',
                                         'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')) ORDER BY r.id)
               FROM rows r), '[]'::json)
       )::text AS body
"""


class DeliveryError(Exception):
    """The receiver did not accept the batch; the job is retried later."""


def sign(secret: str, body: bytes) -> str:
    """The `X-Signature` value for `body`."""
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def verify(secret: str, body: bytes, header: str | None) -> bool:
    return header is not None and hmac.compare_digest(sign(secret, body), header)


def backoff_seconds(attempt: int, base: float, cap: float) -> float:
    """Exponential backoff with jitter: base * 2^(attempt-1), capped, scaled by 0.5..1."""
    delay = min(cap, base * 2.0 ** max(attempt - 1, 0))
    jitter: float = 0.5 + random.random() / 2  # noqa: S311 (jitter, not a secret)
    return delay * jitter


async def build_body(conn: Conn, job: Job) -> tuple[bytes, int]:
    """The JSON body of a batch job and how many notifications it carries."""
    ids = [int(i) for i in job.payload.get("ids", [])]
    promo_id = uuid.UUID(str(job.payload["promo_id"]))
    row = await conn.fetchrow(_BODY, ids, job.id, job.attempts, promo_id)
    assert row is not None
    body: str = row["body"]
    return body.encode(), int(row["count"])


class WebhookSender:
    """One shared `httpx.AsyncClient` (connection reuse) per worker."""

    def __init__(self, url: str | None, secret: str | None, timeout_s: float) -> None:
        self.url = url
        self.secret = secret
        self.timeout_s = timeout_s
        # The receiver is not trusted: no cookies kept between deliveries, no redirects
        # followed (httpx's default), and its response body is never read (see `post`).
        no_cookies = CookieJar(policy=DefaultCookiePolicy(allowed_domains=[]))
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_s),
            limits=httpx.Limits(max_connections=32, max_keepalive_connections=32),
            headers={"User-Agent": "couponflash-webhook/1"},
            cookies=no_cookies,
        )

    @property
    def enabled(self) -> bool:
        return bool(self.url)

    async def post(self, job: Job, body: bytes) -> None:
        if not self.url:
            raise DeliveryError("NOTIFY_WEBHOOK_URL is not set")
        headers = {
            "Content-Type": "application/json",
            "X-Webhook-Id": str(job.id),
            "X-Webhook-Attempt": str(job.attempts),
        }
        if self.secret:
            headers[SIGNATURE_HEADER] = sign(self.secret, body)
        headers.update(tracing.context_carrier())  # W3C traceparent when tracing is on
        try:
            # One deadline for the whole exchange (httpx's timeout is per read), and only the
            # status line and headers are read: a huge or dripping body costs nothing.
            async with asyncio.timeout(self.timeout_s):
                request = self.client.build_request("POST", self.url, content=body, headers=headers)
                response = await self.client.send(request, stream=True)
                await response.aclose()
        except TimeoutError as exc:
            raise DeliveryError(f"no answer within {self.timeout_s} s") from exc
        except httpx.HTTPError as exc:
            raise DeliveryError(f"{type(exc).__name__}: {exc}") from exc
        if not 200 <= response.status_code < 300:
            raise DeliveryError(f"HTTP {response.status_code}")

    async def aclose(self) -> None:
        await self.client.aclose()
