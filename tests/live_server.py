"""The app served by uvicorn in a background thread on a free local port, for tests that
need a real HTTP server (a browser, a schema-driven client)."""

from __future__ import annotations

import socket
import threading
import time

import uvicorn

from app.core.security import TokenService
from app.core.settings import Settings
from app.main import create_app


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LiveServer:
    """`with LiveServer(settings) as live:` serves `live.app` at `live.url` until the block
    ends."""

    def __init__(self, app_settings: Settings) -> None:
        self.app = create_app(app_settings)
        self.tokens = TokenService.from_settings(app_settings)  # tokens the server accepts
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(
            uvicorn.Config(
                self.app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on"
            )
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
