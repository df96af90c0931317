"""Several uvicorn processes behind one port (`python -m app serve --workers 2`, a real
server): `/metrics`, whichever process answers it, counts the requests of every process; the
gauges read at scrape time (requests in flight, pools) add up over the live processes; a
killed process's gauges stop counting at once while its counts stay. One process serves
without the directory."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from app.core.metrics_processes import ENV, metrics_directory, running_child, sweep
from app.core.settings import Settings
from tests.deploy.test_monitoring import (
    PROMETHEUS_OWN,
    metric_names,
    monitored,
    recorded,
    series_names,
)
from tests.helpers import wait_until
from tests.live_server import free_port

ROOT = Path(__file__).resolve().parents[2]
WORKERS = 2
ORM_POOL = 3
# A route and answer nothing else in these tests produces: GET without a token is a 401.
PROBE = "/api/v1/auth/me"
PROBE_KEY = ("http_requests_total", (("method", "GET"), ("route", PROBE), ("status", "401")))
IN_FLIGHT = ("http_requests_in_flight", ())
ORM_SIZE = ("db_pool_connections", (("pool", "orm"), ("state", "size")))

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


@dataclass
class Served:
    proc: subprocess.Popen[bytes]
    port: int
    tmp: Path
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def metrics_dir(self) -> Path:
        (found,) = self.tmp.glob("couponflash-metrics-*")
        return found

    def workers(self) -> list[psutil.Process]:
        """The uvicorn worker processes (multiprocessing's resource tracker apart)."""
        found = []
        for child in psutil.Process(self.proc.pid).children():
            with contextlib.suppress(psutil.NoSuchProcess):
                if child.status() == psutil.STATUS_ZOMBIE:
                    continue
                if "resource_tracker" not in " ".join(child.cmdline()):
                    found.append(child)
        return found

    def scrape(self) -> Samples:
        """One scrape on a new connection, so it may land on any process."""
        response = httpx.get(f"{self.url}/metrics", headers={"Connection": "close"}, timeout=10)
        assert response.status_code == 200
        return parse(response.text)

    def counts_by_process(self, key: tuple[str, tuple[tuple[str, str], ...]]) -> dict[int, float]:
        """A counter as each process's own file holds it."""
        counts = {}
        for path in self.metrics_dir().glob("counter_*.db"):
            pid = int(path.stem.split("_")[1])
            samples = {
                (s.name, tuple(sorted(s.labels.items()))): s.value
                for metric in MultiProcessCollector.merge([str(path)])
                for s in metric.samples
            }
            counts[pid] = samples.get(key, 0.0)
        return counts


def _serve(settings: Settings, tmp: Path, workers: int, env: dict[str, str]) -> Served:
    port = free_port()
    (tmp / "tmp").mkdir()
    log = tmp / "serve.log"
    full_env = {k: v for k, v in os.environ.items() if k != ENV} | {
        "DATABASE_URL": settings.database_url or "",
        "JWT_SECRET": settings.jwt_secret or "",
        "RATE_LIMIT_ENABLED": "false",
        "RUN_WORKER": "false",
        "LOG_LEVEL": "WARNING",
        "DATA_DIR": str(tmp / "data"),
        "TMPDIR": str(tmp / "tmp"),
        "DB_ORM_POOL_SIZE": str(ORM_POOL),
        **env,
    }
    if settings.database_direct_url:
        full_env["DATABASE_DIRECT_URL"] = settings.database_direct_url
    args = ["serve", "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "app", *args],
            cwd=ROOT,
            env=full_env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return Served(proc, port, tmp / "tmp", log)


@contextlib.contextmanager
def serving(settings: Settings, tmp: Path, workers: int, **env: str) -> Iterator[Served]:
    served = _serve(settings, tmp, workers, env)
    try:
        # Every process has started and copied its pool gauges: the pools add up.
        try:
            wait_until(
                lambda: _orm_size(served) == workers * ORM_POOL,
                timeout=120,
                every=0.2,
                what=f"the ORM pools of {workers} processes",
            )
        except AssertionError as exc:
            raise AssertionError(
                f"{exc}\n{served.log.read_text(errors='replace')[-3000:]}"
            ) from exc
        yield served
    finally:
        served.proc.terminate()
        try:
            served.proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            served.proc.kill()
            served.proc.wait()


def _orm_size(served: Served) -> float | None:
    if served.proc.poll() is not None:
        raise AssertionError(served.log.read_text(errors="replace")[-3000:])
    with contextlib.suppress(httpx.HTTPError):
        return served.scrape().get(ORM_SIZE)
    return None


@pytest.fixture(scope="module")
def served(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with serving(settings, tmp_path_factory.mktemp("workers"), WORKERS) as served:
        yield served


def _probe(url: str) -> int:
    response = httpx.get(f"{url}{PROBE}", headers={"Connection": "close"}, timeout=10)
    return response.status_code


def test_counts_of_every_process_add_up_whichever_process_answers(served: Served) -> None:
    assert len(served.workers()) == WORKERS
    sent = 0
    # New connections each time, several at once, until both processes have answered some.
    with ThreadPoolExecutor(8) as pool:
        while True:
            assert set(pool.map(_probe, [served.url] * 40)) == {401}
            sent += 40
            busy = [c for c in served.counts_by_process(PROBE_KEY).values() if c > 0]
            if len(busy) == WORKERS:
                break
            assert sent < 2000, "the requests never reached every process"
    # The last answers were sent a moment before their count.
    wait_until(lambda: served.scrape().get(PROBE_KEY) == sent, what=f"{sent} counted")
    assert sum(served.counts_by_process(PROBE_KEY).values()) == sent
    # Scrape until each process has answered some of these scrapes: every answer has the
    # same totals.
    scrapes = ("http_requests_total", _metrics_labels())
    latency = ("http_request_duration_seconds_count", (("method", "GET"), ("route", PROBE)))
    before = served.counts_by_process(scrapes)
    for _ in range(200):
        seen = served.scrape()
        assert seen[PROBE_KEY] == sent
        assert seen[latency] == sent
        now = served.counts_by_process(scrapes)
        if len([pid for pid, n in now.items() if n > before.get(pid, 0)]) == WORKERS:
            break
    else:
        raise AssertionError("every scrape was answered by the same process")


def test_the_monitored_series_are_offered_by_several_processes_too(served: Served) -> None:
    response = httpx.get(f"{served.url}/metrics", timeout=10)
    offered = series_names(response.text) | recorded() | PROMETHEUS_OWN
    # Set only by the outbox worker's loop and its chain sealer, which this server does not
    # run (RUN_WORKER=false, as the API pods); the worker pods export them. A series with
    # labels, or a `mostrecent` gauge, has nothing in the files until it is first set.
    offered |= {"outbox_lag_seconds", "outbox_jobs_total", "chain_seal_lag_seconds"}
    for source, exprs in monitored().items():
        for expr in exprs:
            missing = metric_names(expr) - offered
            assert not missing, f"{source}: {expr!r} reads {sorted(missing)}"


def _slow_request(port: int) -> socket.socket:
    """A request whose body never comes: in flight until the socket closes."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(
        b"POST /api/v1/auth/token HTTP/1.1\r\nHost: test\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\n"
    )
    return sock


def _held(served: Served, worker: psutil.Process) -> int:
    """Client connections the worker has accepted on the server's port."""
    with contextlib.suppress(psutil.Error):
        return sum(
            1
            for c in worker.net_connections(kind="tcp")
            if c.laddr and c.laddr.port == served.port and c.status == psutil.CONN_ESTABLISHED
        )
    return 0


def test_requests_in_flight_add_up_and_a_killed_process_stops_counting(served: Served) -> None:
    workers = served.workers()
    assert len(workers) == WORKERS
    slow: list[socket.socket] = []
    try:
        # One at a time, until each process holds some.
        while min(_held(served, w) for w in workers) == 0:
            assert len(slow) < 40, "every slow request went to the same process"
            slow.append(_slow_request(served.port))
            wait_until(lambda: sum(_held(served, w) for w in workers) == len(slow), what="accepted")
        held = {w.pid: _held(served, w) for w in workers}
        # The scrape counts itself, in the process that answers it.
        wait_until(
            lambda: served.scrape().get(IN_FLIGHT) == len(slow) + 1,
            what=f"{len(slow)} in flight",
        )
        victim = max(workers, key=lambda w: held[w.pid])
        files = served.metrics_dir()
        assert (files / f"gauge_livesum_{victim.pid}.db").exists()
        counted = served.scrape()[("http_requests_total", _metrics_labels())]
        victim.kill()
        # The launcher takes the dead process's live gauges out; its counts stay.
        wait_until(
            lambda: not (files / f"gauge_livesum_{victim.pid}.db").exists(),
            what="the killed process's gauges removed",
        )
        assert (files / f"counter_{victim.pid}.db").exists()
        survivors = len(slow) - held[victim.pid]
        assert survivors > 0
        wait_until(
            lambda: served.scrape().get(IN_FLIGHT) == survivors + 1,
            what=f"{survivors} in flight after the kill",
        )
        # Counts never go back: the killed process's requests are still in the total.
        assert served.scrape()[("http_requests_total", _metrics_labels())] > counted
    finally:
        for sock in slow:
            sock.close()
    wait_until(lambda: served.scrape().get(IN_FLIGHT) == 1, what="nothing in flight")
    # uvicorn replaced the killed process; the pools add up again.
    wait_until(
        lambda: len(served.workers()) == WORKERS and _orm_size(served) == WORKERS * ORM_POOL,
        timeout=120,
        every=0.2,
        what="the killed process replaced",
    )


def _metrics_labels() -> tuple[tuple[str, str], ...]:
    return (("method", "GET"), ("route", "/metrics"), ("status", "200"))


def test_one_process_keeps_its_metrics_in_memory(settings: Settings, tmp_path: Path) -> None:
    inherited = tmp_path / "inherited"
    inherited.mkdir()
    # A directory left in the environment is not used: its old files would add up.
    with serving(settings, tmp_path, 1, PROMETHEUS_MULTIPROC_DIR=str(inherited)) as served:
        for _ in range(3):
            assert _probe(served.url) == 401
        wait_until(lambda: served.scrape().get(PROBE_KEY) == 3, what="3 counted")
        assert served.scrape().get(IN_FLIGHT) == 1
        assert list(served.tmp.glob("couponflash-metrics-*")) == []
    assert list(inherited.iterdir()) == []


# --- the launcher's part, in this process --------------------------------------------------


def test_the_directory_is_fresh_for_several_workers_and_absent_for_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(ENV, "/somewhere/else")
    with metrics_directory(1) as path:
        assert path is None and ENV not in os.environ
    assert os.environ[ENV] == "/somewhere/else"
    with metrics_directory(2) as path:
        assert path is not None and path.is_dir() and list(path.iterdir()) == []
        assert os.environ[ENV] == str(path)
    assert not path.exists()
    assert os.environ[ENV] == "/somewhere/else"


def test_sweep_takes_out_the_live_gauges_of_exited_children_only(tmp_path: Path) -> None:
    # The child lives until its stdin closes.
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    stranger = 1  # init: alive, but not a child of this process
    try:
        for name in (
            f"gauge_livesum_{child.pid}.db",
            f"gauge_liveall_{child.pid}.db",
            f"counter_{child.pid}.db",
            f"gauge_mostrecent_{child.pid}.db",
            f"gauge_livesum_{stranger}.db",
        ):
            (tmp_path / name).write_bytes(b"")
        assert running_child(child.pid)
        assert sweep(tmp_path) == [stranger]
        assert (tmp_path / f"gauge_livesum_{child.pid}.db").exists()
        os.kill(child.pid, 9)
        wait_until(lambda: not running_child(child.pid), what="the child to exit")
        assert sweep(tmp_path) == [child.pid]
        assert sorted(p.name for p in tmp_path.iterdir()) == [
            f"counter_{child.pid}.db",
            f"gauge_mostrecent_{child.pid}.db",
        ]
        # Not reaped by the sweep: whoever started the child still reads its exit status.
        assert child.wait(timeout=10) == -9
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
