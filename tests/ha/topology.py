"""The high-availability topology of `make test-ha`, all on 127.0.0.1: three etcd members, three
PostgreSQL 15 under Patroni, HAProxy in front of the primary (Patroni REST `/primary`) and
of the API instances, PgBouncer in front of HAProxy's primary port, a relay that carries
the replication connections (to delay one standby's, `tests/ha/relay.py`), the API
instances and the notification workers. Every process starts in a process group of its own
and `Topology.close()` stops them all, its data with them."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import psutil

from bench.common import ROOT, SECRET, free_port
from tests.ha import partition, pgbouncer, relay
from tests.polling import poll, wait_until

PG_BIN = Path("/usr/lib/postgresql/15/bin")
HA_VENV = ROOT / ".venv-ha"
SCOPE = "couponflash"
# PostgreSQL refuses to run as root: Patroni and its servers run as this user.
PG_USER = "postgres"

# Failover timing (docs/ha.md): the leader key lives `ttl` seconds, so a lost primary node is
# replaced within about ttl + loop_wait; `retry_timeout` bounds a DCS or PostgreSQL call
# before the leader demotes itself. Patroni's loop runs every `loop_wait`, which is also how
# soon it notices a crashed postmaster and restarts it: 2 s instead of the usual 5 halves
# that outage for one etcd write every 2 s. Patroni requires ttl >= loop_wait + 2 * retry.
TTL, LOOP_WAIT, RETRY_TIMEOUT = 20, 2, 5


@dataclass
class Proc:
    name: str
    args: list[str]
    log: Path
    env: dict[str, str] | None = None
    user: str | None = None
    popen: subprocess.Popen[bytes] | None = None
    # A cgroup (v2) to run in (a Patroni node's, which a partition cuts off): joined as soon
    # as it starts, before it has opened a connection or started PostgreSQL.
    cgroup: Path | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.popen = subprocess.Popen(
                self.args,
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a process group of its own, stopped as one
                user=self.user,
            )
        if self.cgroup is not None:
            partition.join(self.cgroup, self.popen.pid)

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def kill9(self) -> None:
        """SIGKILL the process itself (not its group): what a crash looks like."""
        if self.alive():
            os.kill(self.pid, signal.SIGKILL)
            assert self.popen is not None
            self.popen.wait()

    def stop(self, timeout: float = 15) -> None:
        if self.popen is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=timeout)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=5)


@dataclass
class Node:
    name: str
    pg_port: int
    rest_port: int
    home: Path
    proc: Proc
    # The port other nodes reach this one's PostgreSQL on (Patroni's connect_address):
    # the replication relay's, when the topology has one, else its own.
    relay_port: int | None = None

    @property
    def connect_port(self) -> int:
        return self.relay_port or self.pg_port

    @property
    def data(self) -> Path:
        return self.home / "data"

    @property
    def config(self) -> Path:
        return self.home / "patroni.yml"

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.pg_port}/couponflash"

    @property
    def socket_url(self) -> str:
        """Its `postgres` database over its Unix socket: reachable from this host even while
        a partition drops every packet of the node."""
        return f"postgresql://postgres@/postgres?host={self.home}&port={self.pg_port}"

    def rest(self, path: str, timeout: float = 1.0) -> tuple[int, Any]:
        """GET Patroni's REST API; (status, JSON body), (0, None) when it does not answer."""
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.rest_port}{path}", timeout=timeout
            ) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as exc:
            with contextlib.suppress(ValueError):
                return exc.code, json.loads(exc.read() or b"null")
            return exc.code, None
        except (OSError, ValueError):
            return 0, None

    def postmaster_pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int((self.data / "postmaster.pid").read_text().split()[0])
        return None


@dataclass
class Topology:
    root: Path
    etcd_ports: list[int]  # client ports, one per etcd member
    etcd_peer_ports: list[int]
    nodes: list[Node]
    pg_proxy_port: int
    api_proxy_port: int
    api_ports: list[int]
    pgbouncer_port: int | None = None
    relay_control_port: int | None = None
    cgroups: Path | None = None  # one cgroup per node under it, when partitions are made
    procs: dict[str, Proc] = field(default_factory=dict)
    api_env: dict[str, dict[str, str]] = field(default_factory=dict)

    # Addresses ---------------------------------------------------------------------------

    @property
    def proxy_url(self) -> str:
        """The primary, through HAProxy."""
        return f"postgresql://postgres@127.0.0.1:{self.pg_proxy_port}/couponflash"

    @property
    def multi_host_url(self) -> str:
        """The primary, found by the driver itself among the three servers."""
        hosts = ",".join(f"127.0.0.1:{n.pg_port}" for n in self.nodes)
        return f"postgresql://postgres@{hosts}/couponflash?target_session_attrs=read-write"

    @property
    def pgbouncer_url(self) -> str:
        """The primary, through PgBouncer (transaction mode) and HAProxy."""
        assert self.pgbouncer_port is not None
        return f"postgresql://postgres@127.0.0.1:{self.pgbouncer_port}/couponflash"

    @property
    def api_base(self) -> str:
        return f"http://127.0.0.1:{self.api_proxy_port}"

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    def cgroup(self, node: Node) -> Path:
        """The cgroup `node`'s Patroni and PostgreSQL run in."""
        assert self.cgroups is not None
        return self.cgroups / node.name

    # Cluster state -----------------------------------------------------------------------

    def members(self) -> list[dict[str, Any]]:
        for node in self.nodes:
            status, body = node.rest("/cluster")
            if status == 200 and isinstance(body, dict):
                members: list[dict[str, Any]] = body.get("members", [])
                return members
        return []

    def leader(self) -> Node | None:
        for member in self.members():
            if member.get("role") == "leader" and member.get("state") == "running":
                return self.node(member["name"])
        return None

    def healthy(self) -> bool:
        """One running leader, every other member streaming from it."""
        members = self.members()
        leaders = [m for m in members if m.get("role") == "leader" and m["state"] == "running"]
        streaming = [m for m in members if m.get("state") == "streaming"]
        return len(members) == len(self.nodes) and len(leaders) == 1 and len(streaming) == 2

    def wait(self, what: str, check: Any, timeout: float, every: float = 0.25) -> float:
        """Poll `check()` until true; returns the seconds it took."""
        started = time.monotonic()
        try:
            wait_until(check, timeout=timeout, every=every, what=what)
        except AssertionError as missed:
            raise TimeoutError(f"{what}: not after {timeout:.0f} s") from missed
        return time.monotonic() - started

    # Processes ---------------------------------------------------------------------------

    def start(self, proc: Proc) -> Proc:
        self.procs[proc.name] = proc
        proc.start()
        return proc

    def close(self) -> None:
        """Stop everything started here (API and workers first, the database last), then any
        server that outlived its Patroni, then delete the data."""
        keep = os.environ.get("HA_LOGS")  # a directory to keep the logs in
        if keep:
            Path(keep).mkdir(parents=True, exist_ok=True)
            for log in self.root.glob("**/*.log"):
                shutil.copy(log, Path(keep) / log.name)
        order = sorted(self.procs.values(), key=lambda p: _STOP_ORDER.get(p.name[:3], 0))
        for proc in order:
            proc.stop()
        root = str(self.root)
        killed = []
        for p in psutil.process_iter(["pid", "cmdline"]):
            with contextlib.suppress(psutil.Error):
                if any(root in part for part in p.info["cmdline"] or ()):
                    p.kill()
                    killed.append(p)
        psutil.wait_procs(killed, timeout=10)
        if self.cgroups is not None:
            partition.remove_groups(self.cgroups)
        shutil.rmtree(self.root, ignore_errors=True)


_STOP_ORDER = {
    "api": 0,
    "wor": 0,
    "pgb": 1,
    "hap": 1,
    "pg1": 2,
    "pg2": 2,
    "pg3": 2,
    "etc": 3,
    "rel": 3,
}


def _patroni_config(
    node: Node,
    etcd_ports: list[int],
    local: Mapping[str, Any] | None = None,
    unix_socket: bool = False,
) -> str:
    parameters = {
        # pg_rewind needs hint bits WAL-logged (data checksums give the same; both are on).
        "wal_log_hints": "on",
        "max_connections": 300,
        "shared_buffers": "64MB",
        "wal_keep_size": "256MB",
        "max_wal_senders": 10,
        "max_replication_slots": 10,
        "hot_standby": "on",
        # A standby whose primary went away retries streaming every second (default 5 s):
        # in strict synchronous mode no COMMIT returns before one is back.
        "wal_retrieve_retry_interval": "1s",
        "unix_socket_directories": str(node.home),
    }
    config = {
        "scope": SCOPE,
        "namespace": "/service/",
        "name": node.name,
        # Every step of a failover, with its time, when the logs are kept (HA_LOGS).
        "log": {"level": "INFO" if os.environ.get("HA_LOGS") else "WARNING"},
        "restapi": {
            "listen": f"127.0.0.1:{node.rest_port}",
            "connect_address": f"127.0.0.1:{node.rest_port}",
        },
        "etcd3": {"hosts": [f"127.0.0.1:{port}" for port in etcd_ports]},
        "bootstrap": {
            "dcs": {
                "ttl": TTL,
                "loop_wait": LOOP_WAIT,
                "retry_timeout": RETRY_TIMEOUT,
                "maximum_lag_on_failover": 1 << 20,
                # Quorum commit: a COMMIT returns once one of the two standbys has it, and
                # a failover promotes only a standby that is known to have every such
                # commit. Strict: with no standby left, writes wait instead of going
                # unreplicated.
                "synchronous_mode": "quorum",
                "synchronous_mode_strict": True,
                "synchronous_node_count": 1,
                "postgresql": {
                    "use_pg_rewind": True,
                    "use_slots": True,
                    "parameters": parameters,
                },
            },
            "initdb": [{"encoding": "UTF8"}, {"locale": "C"}, "data-checksums"],
        },
        "postgresql": {
            "listen": f"127.0.0.1:{node.pg_port}",
            # What the other nodes connect to: replication, clones and pg_rewind.
            "connect_address": f"127.0.0.1:{node.connect_port}",
            "data_dir": str(node.data),
            "bin_dir": str(PG_BIN),
            # Patroni talks to its own server over the Unix socket, as across a partition
            # of its host it still could (a TCP connection would be cut with the rest).
            "use_unix_socket": unix_socket,
            "pgpass": str(node.home / "pgpass"),
            "authentication": {
                "superuser": {"username": "postgres", "password": "postgres"},
                "replication": {"username": "replicator", "password": "replicator"},
            },
            # This node's own settings (e.g. its archive_command), over the cluster's.
            "parameters": {"unix_socket_directories": str(node.home), **(local or {})},
            # Loopback only, trusted: every process of the test runs on this host.
            "pg_hba": [
                "local all all trust",
                "host all all 127.0.0.1/32 trust",
                "host replication replicator 127.0.0.1/32 trust",
            ],
        },
        "tags": {"nofailover": False, "noloadbalance": False, "clonefrom": False},
    }
    return json.dumps(config, indent=2)  # JSON is YAML


# How HAProxy checks each PostgreSQL node's Patroni (see the `listen postgres` comment).
_PG_CHECKS = (
    "inter 500ms fastinter 250ms downinter 250ms fall 2 rise 1 on-marked-down shutdown-sessions"
)


def _haproxy_config(topo: Topology) -> str:
    pg_servers = "\n".join(
        f"    server {n.name} 127.0.0.1:{n.pg_port} check port {n.rest_port}" for n in topo.nodes
    )
    api_servers = "\n".join(
        f"    server api{i + 1} 127.0.0.1:{port} check" for i, port in enumerate(topo.api_ports)
    )
    return f"""global
    maxconn 4000

defaults
    timeout connect 2s
    timeout client 30m
    timeout server 30m
    timeout check 3s

# The primary: the one node whose Patroni answers 200 on /primary. When that changes, the
# old primary's sessions are cut at once, so no client keeps writing to a demoted server.
# A node that is not the primary is checked every 250 ms (downinter), so a new one takes
# connections at most that long after Patroni promotes it. No retries: a connection the
# old primary refuses (it is shutting down, not yet marked down) is closed at once, and
# the service answers 503 with Retry-After; HAProxy would retry the same node three
# times a second apart, holding the request 3 s past the new primary's promotion.
listen postgres
    mode tcp
    bind 127.0.0.1:{topo.pg_proxy_port}
    option httpchk GET /primary
    http-check expect status 200
    retries 0
    default-server {_PG_CHECKS}
{pg_servers}

# The API instances. A request whose instance died before answering is sent again to
# another: every mutating request carries an Idempotency-Key, so the retry is safe.
listen api
    mode http
    bind 127.0.0.1:{topo.api_proxy_port}
    balance roundrobin
    option httpchk GET /healthz
    timeout server 60s
    errorfile 503 {topo.root}/503.http
    errorfile 502 {topo.root}/unknown.http
    errorfile 504 {topo.root}/unknown.http
    retries 3
    option redispatch 1
    retry-on conn-failure empty-response response-timeout
    http-response set-header X-Served-By %s
    default-server inter 500ms fastinter 250ms fall 3 rise 2
{api_servers}
"""


# The load balancer's own answers, in the service's contract: no instance to send the request
# to is a plain 503 (nothing was done); an instance that died or hung while it had the request
# (502/504, after the retries above) is a 503 `outcome: unknown`, settled by the same key.
_LB_ERRORS = {
    "503.http": {"detail": "No API instance is available; retry shortly."},
    "unknown.http": {
        "detail": "The API instance handling the request was lost; it may or may not have"
        " been applied. Retry with the same Idempotency-Key.",
        "outcome": "unknown",
    },
}


def _http_problem(extra: dict[str, str]) -> bytes:
    body = json.dumps(
        {"type": "/problems/unavailable", "title": "Service Unavailable", "status": 503, **extra}
    ).encode()
    head = (
        "HTTP/1.1 503 Service Unavailable\r\n"
        "Content-Type: application/problem+json\r\n"
        "Retry-After: 2\r\n"
        "Cache-Control: no-store\r\n"
        "Connection: close\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def build(
    api_instances: int = 2,
    parameters: Callable[[Node], Mapping[str, Any]] | None = None,
    prefix: str = "cf-ha-",
    with_pgbouncer: bool = False,
    with_relay: bool = False,
    with_partitions: bool = False,
) -> Topology:
    """The topology's files under a fresh temporary directory, nothing started yet.
    `parameters(node)`: PostgreSQL settings of that node's own, set through its Patroni
    configuration (`postgresql.parameters`). `with_pgbouncer`: PgBouncer in front of
    HAProxy's primary port; `with_relay`: replication through the relay;
    `with_partitions`: each node's Patroni in a cgroup of its own, which
    `partition.partitioned` can cut off."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    root.chmod(0o755)
    nodes = []
    for i in range(3):
        name = f"pg{i + 1}"
        home = root / name
        home.mkdir()
        nodes.append(
            Node(
                name,
                free_port(),
                free_port(),
                home,
                Proc(name, [], root / f"{name}.log"),
                relay_port=free_port() if with_relay else None,
            )
        )
    topo = Topology(
        root=root,
        etcd_ports=[free_port() for _ in range(3)],
        etcd_peer_ports=[free_port() for _ in range(3)],
        nodes=nodes,
        pg_proxy_port=free_port(),
        api_proxy_port=free_port(),
        api_ports=[free_port() for _ in range(api_instances)],
        pgbouncer_port=free_port() if with_pgbouncer else None,
        relay_control_port=free_port() if with_relay else None,
        cgroups=partition.CGROUP2 / root.name if with_partitions else None,
    )
    pg = pwd.getpwnam(PG_USER)
    for node in nodes:
        local = parameters(node) if parameters else None
        node.config.write_text(
            _patroni_config(node, topo.etcd_ports, local, unix_socket=with_partitions)
        )
        if with_partitions:
            node.proc.cgroup = partition.make_group(f"{root.name}/{node.name}")
        os.chown(node.home, pg.pw_uid, pg.pw_gid)
        os.chown(node.config, pg.pw_uid, pg.pw_gid)
        node.proc.args = [str(HA_VENV / "bin" / "patroni"), str(node.config)]
        node.proc.env = {"PATH": f"{PG_BIN}:/usr/bin:/bin", "HOME": str(node.home)}
        node.proc.user = PG_USER if os.getuid() == 0 else None
    (root / "haproxy.cfg").write_text(_haproxy_config(topo))
    if topo.pgbouncer_port is not None:
        home = root / "pgbouncer"
        home.mkdir()
        (home / "pgbouncer.ini").write_text(
            pgbouncer.config(home, topo.pgbouncer_port, topo.pg_proxy_port)
        )
        (home / "userlist.txt").write_text(pgbouncer.userlist())
        for path in (home, home / "pgbouncer.ini", home / "userlist.txt"):
            os.chown(path, pg.pw_uid, pg.pw_gid)
    for name, body in _LB_ERRORS.items():
        (root / name).write_bytes(_http_problem(body))
    return topo


def etcd_proc(topo: Topology, index: int) -> Proc:
    """Member `index` of the three-member etcd cluster (a majority of two keeps it going);
    restarted on the same data directory, it rejoins as the same member."""
    name = f"etcd{index + 1}"
    client = f"http://127.0.0.1:{topo.etcd_ports[index]}"
    peer = f"http://127.0.0.1:{topo.etcd_peer_ports[index]}"
    cluster = ",".join(
        f"etcd{i + 1}=http://127.0.0.1:{port}" for i, port in enumerate(topo.etcd_peer_ports)
    )
    return Proc(
        name,
        [
            "etcd",
            "--name",
            name,
            "--data-dir",
            str(topo.root / name),
            "--listen-client-urls",
            client,
            "--advertise-client-urls",
            client,
            "--listen-peer-urls",
            peer,
            "--initial-advertise-peer-urls",
            peer,
            "--initial-cluster",
            cluster,
            "--initial-cluster-state",
            "new",
            "--log-level",
            "warn",
        ],
        topo.root / f"{name}.log",
    )


def etcd_healthy(topo: Topology, index: int) -> bool:
    try:
        url = f"http://127.0.0.1:{topo.etcd_ports[index]}/health"
        with urllib.request.urlopen(url, timeout=1) as r:
            return bool(json.loads(r.read()).get("health") == "true")
    except (OSError, ValueError):
        return False


def relay_proc(topo: Topology) -> Proc:
    """The replication relay (`tests/ha/relay.py`): one listening port per node."""
    assert topo.relay_control_port is not None
    routes = [f"{n.relay_port}:{n.pg_port}" for n in topo.nodes]
    control = str(topo.relay_control_port)
    return Proc(
        "relay",
        [sys.executable, "-m", "tests.ha.relay", "--control", control, *routes],
        topo.root / "relay.log",
    )


def relay_command(topo: Topology, line: str) -> str:
    """One command to the replication relay (`delay NAME MS SECONDS`, `clear`, `stats`)."""
    assert topo.relay_control_port is not None
    return relay.command(topo.relay_control_port, line)


def _listening(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
        return True
    return False


def pgbouncer_proc(topo: Topology) -> Proc:
    """PgBouncer in the foreground (its log on stderr), as the PostgreSQL user: it refuses
    to run as root."""
    return Proc(
        "pgbouncer",
        [pgbouncer.PGBOUNCER, str(topo.root / "pgbouncer" / "pgbouncer.ini")],
        topo.root / "pgbouncer.log",
        user=PG_USER if os.getuid() == 0 else None,
    )


def start_database(topo: Topology) -> None:
    """etcd, then the three Patroni nodes; returns once one leads and two stream from it.
    Then HAProxy, and PgBouncer behind it when the topology has one."""
    if topo.relay_control_port is not None:
        topo.start(relay_proc(topo))
        topo.wait("the relay listening", lambda: _listening(topo.relay_control_port or 0), 30)
    for i in range(len(topo.etcd_ports)):
        topo.start(etcd_proc(topo, i))
    topo.wait(
        "etcd healthy",
        lambda: all(etcd_healthy(topo, i) for i in range(len(topo.etcd_ports))),
        60,
    )
    topo.start(topo.nodes[0].proc)
    topo.wait("the first node leads", lambda: topo.leader() is not None, 90)
    for node in topo.nodes[1:]:
        topo.start(node.proc)
    topo.wait("three members, two streaming", topo.healthy, 120)
    topo.start(
        Proc(
            "haproxy",
            ["haproxy", "-db", "-f", str(topo.root / "haproxy.cfg")],
            topo.root / "haproxy.log",
        )
    )
    if topo.pgbouncer_port is not None:
        topo.start(pgbouncer_proc(topo))
        topo.wait("PgBouncer listening", lambda: _listening(topo.pgbouncer_port or 0), 30)


def patroni_switchover(leader: Node, candidate: Node | None = None) -> None:
    """A planned switchover (`patronictl switchover`); returns once Patroni has done it.
    Without a candidate Patroni promotes the healthiest quorum standby, and the other one
    follows it at once; naming one makes every other standby wait 2 s (Patroni's fixed
    pause for the named candidate to take the leader key) before it follows, and in strict
    synchronous mode no commit is acknowledged until a standby streams from the new
    primary (docs/ha.md, "Planned switchover")."""
    chosen = ["--candidate", candidate.name] if candidate is not None else []
    done = subprocess.run(
        [
            str(HA_VENV / "bin" / "patronictl"),
            "-c",
            str(leader.config),
            "switchover",
            "--leader",
            leader.name,
            *chosen,
            "--force",
        ],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()


def _app_env(url: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": url,
        "DATABASE_DIRECT_URL": "",
        "JWT_SECRET": SECRET,
        "RATE_LIMIT_ENABLED": "false",
        "RUN_WORKER": "false",
        "LOG_LEVEL": "WARNING",
        "LOG_JSON": "true",
        "WORKERS": "1",
        "DB_POOL_SIZE": "12",
        "DB_ORM_POOL_SIZE": "4",
        "DB_MAX_OVERFLOW": "4",
        "NOTIFY_SSE_HEARTBEAT_S": "2",
        **(extra or {}),
    }


def api_proc(topo: Topology, index: int, url: str, extra: Mapping[str, str] | None = None) -> Proc:
    """API instance `index` (api1, api2, ...) on `url`; `extra`: more of its environment."""
    port = topo.api_ports[index]
    data = topo.root / f"api{index + 1}-data"
    data.mkdir(exist_ok=True)
    return Proc(
        f"api{index + 1}",
        [sys.executable, "-m", "app", "serve", "--host", "127.0.0.1", "--port", str(port)],
        topo.root / f"api{index + 1}.log",
        env=_app_env(url, {"DATA_DIR": str(data), **(extra or {})}),
    )


def pgbouncer_api_env(topo: Topology) -> dict[str, str]:
    """An API instance behind PgBouncer: transaction-mode settings, and its `LISTEN`
    session (the live streams' hub) straight to the primary through HAProxy."""
    return {"DB_PGBOUNCER": "true", "DATABASE_DIRECT_URL": topo.proxy_url}


def worker_proc(topo: Topology, index: int, url: str) -> Proc:
    data = topo.root / f"worker{index + 1}-data"
    data.mkdir(exist_ok=True)
    return Proc(
        f"worker{index + 1}",
        [sys.executable, "-m", "app", "worker"],
        topo.root / f"worker{index + 1}.log",
        env=_app_env(
            url,
            {
                "DATA_DIR": str(data),
                "WORKER_POLL_SECONDS": "0.5",
                "WORKER_LEASE_SECONDS": "30",
                "NOTIFY_BATCH_SIZE": "100",
            },
        ),
    )


def api_ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
            return bool(r.status == 200)
    except OSError:
        return False


# What every run on this topology does ----------------------------------------------------


async def connect_when_ready(url: str, timeout: float = 30) -> asyncpg.Connection:
    """A connection once the server (or HAProxy's choice of primary) accepts it."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await asyncpg.connect(url, timeout=2)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.25)


async def create_and_migrate(topo: Topology) -> None:
    """The service's database on the primary (through HAProxy), migrated to head."""
    admin = await connect_when_ready(topo.proxy_url.rsplit("/", 1)[0] + "/postgres")
    try:
        await admin.execute("CREATE DATABASE couponflash")
    finally:
        await admin.close()
    migrate = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "app", "migrate"],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": topo.proxy_url},
        capture_output=True,
        timeout=180,
        check=False,
    )
    assert migrate.returncode == 0, migrate.stderr.decode()[-2000:]


async def poll_until(
    what: str, check: Callable[[], Awaitable[bool]], timeout: float, every: float = 0.2
) -> float:
    """Await `check()` until it is true; the seconds it took."""
    started = time.monotonic()
    try:
        await poll(check, timeout=timeout, every=every, what=what)
    except AssertionError as missed:
        raise TimeoutError(f"{what}: not after {timeout:.0f} s") from missed
    return time.monotonic() - started


def app_check(url: str) -> str:
    """`python -m app check` against `url`; its last line ("N passed, 0 failed"), or an
    AssertionError with what it printed."""
    done = subprocess.run(
        [sys.executable, "-m", "app", "check"],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": url},
        capture_output=True,
        timeout=120,
        check=False,
    )
    out = done.stdout.decode()
    assert done.returncode == 0, out[-3000:] + done.stderr.decode()[-2000:]
    return out.strip().splitlines()[-1]


def run_in_topology(run: Callable[[Topology], Coroutine[Any, Any, int]], **build_args: Any) -> int:
    """Build the topology (`build(**build_args)`), `run(topo)` to its end, then stop
    everything it started and delete its data, whatever happened (SIGTERM included: a CI
    timeout, Ctrl-C of make)."""
    if not (HA_VENV / "bin" / "patroni").exists():
        print(f"Patroni is not installed in {HA_VENV}: run `make test-ha`", file=sys.stderr)
        return 2
    if os.getuid() == 0:
        pwd.getpwnam(PG_USER)  # PostgreSQL refuses root: its user must exist
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    topo = build(**build_args)
    try:
        return asyncio.run(run(topo))
    finally:
        topo.close()
