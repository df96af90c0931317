"""`make run` on the embedded PostgreSQL, stopped the way a terminal, systemd or a
container runtime stops it (SIGTERM to its whole process group): the database it started
must stop with it, not outlive it holding the data directory and a port."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path

import httpx
import psutil

from tests.helpers import wait_for
from tests.live_server import free_port

ROOT = Path(__file__).resolve().parent.parent


def _postmaster(pgdata: Path) -> psutil.Process | None:
    """The postmaster serving `pgdata`, if it runs."""
    pid_file = pgdata / "postmaster.pid"
    with contextlib.suppress(OSError, ValueError, psutil.Error):
        process = psutil.Process(int(pid_file.read_text().split()[0]))
        if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
            return process
    return None


def _answers(url: str) -> bool:
    with contextlib.suppress(httpx.HTTPError):
        return httpx.get(url, timeout=2).status_code == 200
    return False


async def test_sigterm_to_make_run_stops_the_embedded_postgres(tmp_path: Path) -> None:
    port = free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DATABASE_URL", "MAKEFLAGS", "MAKELEVEL", "MFLAGS")
    }
    env |= {
        "DATA_DIR": str(tmp_path),
        "PORT": str(port),
        "HOST": "127.0.0.1",
        "WORKERS": "1",
    }
    pgdata = tmp_path / "postgres"
    run = subprocess.Popen(
        ["make", "-s", "run"],
        cwd=ROOT,
        env=env,
        start_new_session=True,  # its own process group, as a terminal gives it
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    postmaster = None
    try:
        await wait_for(
            lambda: _answers(f"http://127.0.0.1:{port}/readyz"), timeout=120, what="make run"
        )
        postmaster = _postmaster(pgdata)
        assert postmaster is not None, "the embedded PostgreSQL is not running"
        os.killpg(run.pid, signal.SIGTERM)
        await wait_for(lambda: run.poll() is not None, timeout=60, what="make run to exit")
        await wait_for(
            lambda: _postmaster(pgdata) is None, timeout=30, what="the embedded PostgreSQL to stop"
        )
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
        if postmaster is not None and postmaster.is_running():
            postmaster.kill()
