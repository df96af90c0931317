"""What every benchmark needs: a throwaway database, the service as a subprocess, a free
port, (peak) memory of a process or its tree, and a section of docs/benchmarks.md to
(re)write."""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import psutil

from app.core.db import libpq_url

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "docs" / "benchmarks.md"
SECRET = "bench-secret-" + "s" * 40


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def throwaway_database(prefix: str) -> Iterator[str]:
    """A fresh database on DATABASE_URL's server, else a private embedded server."""
    configured = os.environ.get("DATABASE_URL")
    if not configured:
        from app.core.embedded import start_embedded

        tmp = Path(tempfile.mkdtemp(prefix=f"cf-{prefix}-"))
        tmp.chmod(0o755)
        server, url = start_embedded(tmp, cleanup="delete")
        try:
            yield url
        finally:
            server.cleanup()
        return
    admin = libpq_url(configured)
    name = f"cf_{prefix}_{uuid.uuid4().hex[:6]}".replace("-", "_")

    async def run(sql: str) -> None:
        conn = await asyncpg.connect(admin)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run(f'CREATE DATABASE "{name}"'))
    parts = urlsplit(admin)
    try:
        yield urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))
    finally:
        asyncio.run(run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def wait_healthy(port: int, proc: subprocess.Popen[bytes], path: str = "/healthz") -> None:
    deadline = time.monotonic() + 90
    while True:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"http://127.0.0.1:{port}{path}", timeout=1).status_code == 200:
                return
        if time.monotonic() > deadline or proc.poll() is not None:
            raise RuntimeError(f"the process on port {port} did not start")
        time.sleep(0.2)


@contextlib.contextmanager
def process(
    args: list[str],
    port: int,
    env: Mapping[str, str],
    health: str = "/healthz",
    cwd: Path = ROOT,
) -> Iterator[subprocess.Popen[bytes]]:
    """Run a server process until the block ends; waits for its health route first. `cwd`:
    the checkout it runs from (`python -m` imports from there)."""
    proc = subprocess.Popen(args, cwd=cwd, env={**os.environ, **env})
    try:
        wait_healthy(port, proc, health)
        yield proc
    finally:
        stop(proc, 30)


def stop(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM, then SIGKILL if the process has not exited within `timeout` seconds."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def service(
    url: str,
    port: int,
    workers: int,
    extra_env: Mapping[str, str] | None = None,
    health: str = "/healthz",
    cwd: Path = ROOT,
) -> contextlib.AbstractContextManager[subprocess.Popen[bytes]]:
    """`python -m app serve` against `url`, rate limits and the worker off; `extra_env`
    adds to (or overrides) its environment; `cwd`: the checkout it runs from."""
    env = {
        "DATABASE_URL": url,
        "JWT_SECRET": SECRET,
        "RATE_LIMIT_ENABLED": "false",
        "RUN_WORKER": "false",
        "LOG_LEVEL": "WARNING",
        "WORKERS": str(workers),
        "DATA_DIR": tempfile.mkdtemp(prefix="cf-bench-data-"),
        **(extra_env or {}),
    }
    args = [sys.executable, "-m", "app", "serve", "--port", str(port), "--host", "127.0.0.1"]
    return process(args, port, env, health, cwd)


@contextlib.contextmanager
def worker(
    url: str, extra_env: Mapping[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """`python -m app worker` against `url` (notifications, sweeps, the chain sealer) until
    the block ends, as a deployment runs it beside the API."""
    env = {"DATABASE_URL": url, "JWT_SECRET": SECRET, "LOG_LEVEL": "WARNING", **(extra_env or {})}
    proc = subprocess.Popen(
        [sys.executable, "-m", "app", "worker"], cwd=ROOT, env={**os.environ, **env}
    )
    try:
        yield proc
    finally:
        early = proc.poll()
        stop(proc, 30)
    if early is not None:
        raise RuntimeError(f"the worker exited with code {early} before the run ended")


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and its children, in MiB."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += proc.memory_info().rss
    return total / 1_048_576


def peak_rss_mb(pid: int) -> float:
    """The kernel's high-water mark (VmHWM) of one process's resident memory, in MiB."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    match = re.search(r"VmHWM:\s+(\d+) kB", text)
    return int(match.group(1)) / 1024 if match else 0.0


class RssSampler:
    """`with RssSampler(pid) as rss:` samples `tree_rss_mb(pid)` every `interval` seconds
    while the block runs; `rss.peak_mb` is the largest sample."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        self.pid = pid
        self.interval = interval
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, tree_rss_mb(self.pid))
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = psutil.virtual_memory().total / 2**30
    return f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB, Python {platform.python_version()}"


def write_section(title: str, body: str) -> None:
    """Replace (or append) the `## title` section of docs/benchmarks.md."""
    section = f"## {title}\n\n{body.strip()}\n"
    text = BENCHMARKS.read_text() if BENCHMARKS.exists() else "# Benchmarks\n"
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text).rstrip("\n") + "\n"
    else:
        text = text.rstrip("\n") + "\n\n" + section
    BENCHMARKS.parent.mkdir(parents=True, exist_ok=True)
    BENCHMARKS.write_text(text)
    print(f"wrote the '{title}' section of {BENCHMARKS}")
