"""The launcher's side of metrics across several uvicorn processes: a fresh
`PROMETHEUS_MULTIPROC_DIR` for each start, and the live gauges of workers that exited taken
out of it (`mark_process_dead`), however they ended: a crash, a SIGKILL, uvicorn's restarts.

Runs in the parent process, which serves nothing: it must be set up before uvicorn spawns
the workers (prometheus_client picks its mode when a process imports it)."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

ENV = "PROMETHEUS_MULTIPROC_DIR"
SWEEP_EVERY_S = 0.5
# Files of gauges whose value counts only while its process lives (`live*` modes).
_LIVE_FILE = re.compile(r"gauge_live[a-z]+_(\d+)\.db")


@contextlib.contextmanager
def metrics_directory(workers: int) -> Iterator[Path | None]:
    """Around `uvicorn.run`: with several workers, a new directory for their metrics (removed
    at the end) and a thread that sweeps dead workers' live gauges out of it; with one, no
    directory, every value in memory. An inherited `PROMETHEUS_MULTIPROC_DIR` is never
    used: files left by an earlier start would add to this one's counts."""
    inherited = os.environ.pop(ENV, None)
    if workers <= 1:
        try:
            yield None
        finally:
            _restore(inherited)
        return
    path = Path(tempfile.mkdtemp(prefix="couponflash-metrics-"))
    os.environ[ENV] = str(path)
    stop = threading.Event()
    sweeper = threading.Thread(target=_sweep_until, args=(path, stop), daemon=True)
    sweeper.start()
    try:
        yield path
    finally:
        stop.set()
        sweeper.join(timeout=5)
        shutil.rmtree(path, ignore_errors=True)
        _restore(inherited)


def _restore(inherited: str | None) -> None:
    os.environ.pop(ENV, None)
    if inherited is not None:
        os.environ[ENV] = inherited


def _sweep_until(path: Path, stop: threading.Event) -> None:
    while not stop.wait(SWEEP_EVERY_S):
        sweep(path)


def sweep(path: Path) -> list[int]:
    """`mark_process_dead` for every process with live-gauge files that is no longer a
    running child of this one; returns their pids."""
    # Imported here: importing prometheus_client fixes its mode for this process, and with
    # one worker this process serves, without the directory.
    from prometheus_client.multiprocess import mark_process_dead

    dead = set()
    for entry in os.scandir(path):
        match = _LIVE_FILE.fullmatch(entry.name)
        if match and not running_child(int(match.group(1))):
            dead.add(int(match.group(1)))
    for pid in dead:
        mark_process_dead(pid, str(path))  # type: ignore[no-untyped-call]
    return sorted(dead)


def running_child(pid: int) -> bool:
    """True while `pid` is a child of this process that has not exited. Asks with WNOWAIT,
    so an exited child stays for uvicorn to reap (and read its exit status)."""
    if not hasattr(os, "waitid"):  # macOS: an exited but unreaped child still reads as alive
        try:
            os.kill(pid, 0)
        except OSError as exc:
            return not isinstance(exc, ProcessLookupError)
        return True
    try:
        state = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:  # not ours, or exited and already reaped
        return False
    return state is None
