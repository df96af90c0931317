"""API10:2023 Unsafe consumption of APIs: the webhook receiver is a third party. Its
answer is used for one bit only (2xx or not): its body, redirects, cookies and slowness are
never trusted."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from app.core.outbox import Job
from app.notifications.webhook import DeliveryError, WebhookSender, verify
from tests.helpers import wait_for

SECRET = "unsafe-consumption-secret"
BODY = b'{"event": "promo.started", "notifications": [{"id": 1}]}'


@dataclass
class Receiver:
    """A webhook receiver on 127.0.0.1 with one misbehaviour per path."""

    base: str = ""
    calls: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)
    streamed: int = 0
    stream_ended: bool = False  # a streamed body finished or was abandoned

    def url(self, path: str) -> str:
        return f"{self.base}{path}"

    def paths(self) -> list[str]:
        return [p for p, _, _ in self.calls]


async def _serve(app: Starlette) -> AsyncIterator[str]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, lifespan="off", log_level="critical", access_log=False)
    )
    task = asyncio.create_task(server.serve(sockets=[sock]))
    await wait_for(lambda: server.started, timeout=10, what="receiver started")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        server.force_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, timeout=5)
        sock.close()


@pytest.fixture
async def other_host() -> AsyncIterator[Receiver]:
    """Where a malicious receiver would like the webhook to go next."""
    state = Receiver()

    async def anything(request: Request) -> Response:
        state.calls.append((request.url.path, dict(request.headers), await request.body()))
        return Response("stolen", status_code=200)

    app = Starlette(routes=[Route("/{rest:path}", anything, methods=["GET", "POST"])])
    async for base in _serve(app):
        state.base = base
        yield state


@pytest.fixture
async def receiver(other_host: Receiver) -> AsyncIterator[Receiver]:
    state = Receiver()

    async def record(request: Request) -> None:
        state.calls.append((request.url.path, dict(request.headers), await request.body()))

    async def garbage(request: Request) -> Response:
        await record(request)
        return Response(b"\x00\xff<html>not json{{{", status_code=200, media_type="text/html")

    async def lying(request: Request) -> Response:
        await record(request)
        return Response(b'{"status": "failed", "retry": true}', status_code=200)

    async def error(request: Request) -> Response:
        await record(request)
        return Response(
            b"<script>alert(1)</script> Traceback: internal receiver secret", status_code=500
        )

    async def accepted_empty(request: Request) -> Response:
        await record(request)
        return Response(status_code=204)

    def redirect(code: int) -> object:
        async def handler(request: Request) -> Response:
            await record(request)
            return RedirectResponse(other_host.url("/steal"), status_code=code)

        return handler

    async def cookie(request: Request) -> Response:
        await record(request)
        response = Response(status_code=200)
        response.set_cookie("tracker", "receiver-chosen-value")
        return response

    async def drip(request: Request) -> Response:
        await record(request)

        async def body() -> AsyncIterator[bytes]:
            for _ in range(30):
                state.streamed += 1
                yield b"x"
                await asyncio.sleep(0.1)

        return StreamingResponse(body(), status_code=200)

    async def huge(request: Request) -> Response:
        await record(request)

        async def body() -> AsyncIterator[bytes]:
            chunk = b"y" * 1_048_576
            try:
                for _ in range(64):
                    # Count only what a connected client can still be reading.
                    if await request.is_disconnected():
                        break
                    state.streamed += len(chunk)
                    yield chunk
                    await asyncio.sleep(0.01)
            finally:
                state.stream_ended = True

        return StreamingResponse(body(), status_code=200)

    routes = [
        Route("/garbage", garbage, methods=["POST"]),
        Route("/lying", lying, methods=["POST"]),
        Route("/error", error, methods=["POST"]),
        Route("/empty", accepted_empty, methods=["POST"]),
        Route("/cookie", cookie, methods=["POST"]),
        Route("/drip", drip, methods=["POST"]),
        Route("/huge", huge, methods=["POST"]),
        *(
            Route(f"/redirect-{c}", redirect(c), methods=["POST"])
            for c in (301, 302, 303, 307, 308)
        ),
    ]
    async for base in _serve(Starlette(routes=routes)):
        state.base = base
        yield state


def _job() -> Job:
    return Job(id=42, topic="webhook.deliver", payload={}, attempts=1, max_attempts=3)


@contextlib.asynccontextmanager
async def _sender(url: str, timeout_s: float = 5) -> AsyncIterator[WebhookSender]:
    sender = WebhookSender(url, SECRET, timeout_s)
    try:
        yield sender
    finally:
        await sender.aclose()


@pytest.mark.parametrize("path", ["/garbage", "/lying", "/empty"])
async def test_a_2xx_is_accepted_whatever_its_body(receiver: Receiver, path: str) -> None:
    async with _sender(receiver.url(path)) as sender:
        assert await sender.post(_job(), BODY) is None
    [(_, headers, body)] = receiver.calls
    assert body == BODY and verify(SECRET, body, headers["x-signature"])


async def test_an_error_body_is_not_carried_into_the_failure(receiver: Receiver) -> None:
    async with _sender(receiver.url("/error")) as sender:
        with pytest.raises(DeliveryError) as failure:
            await sender.post(_job(), BODY)
    assert str(failure.value) == "HTTP 500"


@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
async def test_redirects_are_failures_and_never_followed(
    receiver: Receiver, other_host: Receiver, code: int
) -> None:
    async with _sender(receiver.url(f"/redirect-{code}")) as sender:
        with pytest.raises(DeliveryError) as failure:
            await sender.post(_job(), BODY)
    assert str(failure.value) == f"HTTP {code}"
    assert receiver.paths() == [f"/redirect-{code}"]
    assert other_host.calls == []  # neither the body nor the signature went elsewhere


async def test_cookies_set_by_the_receiver_are_not_sent_back(receiver: Receiver) -> None:
    async with _sender(receiver.url("/cookie")) as sender:
        await sender.post(_job(), BODY)
        await sender.post(_job(), BODY)
    assert len(receiver.calls) == 2
    assert "cookie" not in receiver.calls[1][1], receiver.calls[1][1]


async def test_a_slow_dripping_response_is_abandoned_in_bounded_time(receiver: Receiver) -> None:
    started = time.monotonic()
    async with _sender(receiver.url("/drip"), timeout_s=0.5) as sender:
        with contextlib.suppress(DeliveryError):
            await sender.post(_job(), BODY)
    assert time.monotonic() - started < 2
    assert receiver.paths() == ["/drip"]  # the receiver was reached and began dripping


async def test_a_huge_response_body_is_not_downloaded(receiver: Receiver) -> None:
    async with _sender(receiver.url("/huge")) as sender:
        with contextlib.suppress(DeliveryError):
            await sender.post(_job(), BODY)
    # The receiver stops streaming once it sees the sender gone (or after all 64 MiB).
    await wait_for(lambda: receiver.stream_ended, timeout=30, what="stream end")
    assert 0 < receiver.streamed < 16 * 1_048_576
