"""pgBackRest for `make test-restore`: one repository under the run's temporary directory,
WAL archived into it by every node of the Patroni cluster, backups and restores run as the
database's user, and the restored data directory started as a PostgreSQL of its own."""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import time
from pathlib import Path

import asyncpg

from tests.ha.topology import PG_BIN, PG_USER, Node, Proc, poll_until

STANZA = "couponflash"
ARCHIVE_TIMEOUT_S = 60


def _as_postgres() -> str | None:
    return PG_USER if os.getuid() == 0 else None


def own(path: Path, mode: int = 0o700) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(mode)
    if os.getuid() == 0:
        pg = pwd.getpwnam(PG_USER)
        os.chown(path, pg.pw_uid, pg.pw_gid)
    return path


def backrest_home(root: Path) -> Path:
    return root / "pgbackrest"


def backrest_config(root: Path) -> Path:
    return backrest_home(root) / "pgbackrest.conf"


def write_backrest_config(root: Path) -> Path:
    """One repository (a directory of the run), its log, lock and spool paths beside it.
    The node a command is about (`pg1-*`) is given on each command line."""
    home = own(backrest_home(root))
    for sub in ("repo", "log", "lock", "spool"):
        own(home / sub)
    config = backrest_config(root)
    config.write_text(
        f"""[global]
repo1-path={home / "repo"}
repo1-retention-full=2
log-path={home / "log"}
lock-path={home / "lock"}
spool-path={home / "spool"}
log-level-console=warn
log-level-file=info
compress-type=lz4
start-fast=y
archive-timeout={ARCHIVE_TIMEOUT_S}

[{STANZA}]
pg1-user=postgres
"""
    )
    config.chmod(0o644)
    return config


def node_options(data: Path, port: int, socket: Path) -> list[str]:
    return [f"--pg1-path={data}", f"--pg1-port={port}", f"--pg1-socket-path={socket}"]


def archive_parameters(node: Node) -> dict[str, str]:
    """What each node's Patroni sets in its PostgreSQL: WAL archived into the repository by
    `archive-push` (`%p` is relative to the node's data directory, hence its `pg1-path`).
    Only the primary archives (archive_mode `on`); whichever node leads does."""
    config = backrest_config(node.home.parent)
    return {
        "archive_mode": "on",
        "archive_command": (
            f"pgbackrest --config={config} --stanza={STANZA} --pg1-path={node.data} archive-push %p"
        ),
        "archive_timeout": "60s",
    }


def backrest(root: Path, command: str, *options: str, timeout: float = 300) -> float:
    """Run one pgBackRest command as the database's user; the seconds it took."""
    args = ["pgbackrest", f"--config={backrest_config(root)}", f"--stanza={STANZA}", *options]
    started = time.monotonic()
    done = subprocess.run(
        [*args, command],
        capture_output=True,
        timeout=timeout,
        check=False,
        user=_as_postgres(),
        cwd="/",
    )
    took = time.monotonic() - started
    if done.returncode != 0:
        raise AssertionError(
            f"pgbackrest {command} exited {done.returncode}:\n"
            + done.stdout.decode()[-3000:]
            + done.stderr.decode()[-3000:]
        )
    print(f"[restore] pgbackrest {command} {' '.join(options)}: {took:.1f} s", flush=True)
    return took


def backup_sizes(root: Path) -> str:
    """The last backup's size: the database's and, compressed, the repository's."""
    done = subprocess.run(
        [
            "pgbackrest",
            f"--config={backrest_config(root)}",
            f"--stanza={STANZA}",
            "--output=json",
            "info",
        ],
        capture_output=True,
        timeout=60,
        check=True,
        user=_as_postgres(),
        cwd="/",
    )
    info = json.loads(done.stdout)[0]["backup"][-1]["info"]
    mb = 1 << 20
    return f"{info['size'] / mb:.0f} MB, {info['repository']['size'] / mb:.0f} MB in the repository"


async def archived(conn: asyncpg.Connection) -> float:
    """Close the current WAL segment and wait until pgBackRest has it (`pg_stat_archiver`);
    the seconds it took."""
    segment = await conn.fetchval("SELECT pg_walfile_name(pg_switch_wal())")

    async def done() -> bool:
        row = await conn.fetchrow(
            "SELECT last_archived_wal, last_failed_wal, last_failed_time FROM pg_stat_archiver"
        )
        assert row is not None
        return bool(row["last_archived_wal"] and row["last_archived_wal"] >= segment)

    try:
        return await poll_until(f"WAL segment {segment} archived", done, ARCHIVE_TIMEOUT_S)
    except TimeoutError as late:
        row = await conn.fetchrow("SELECT * FROM pg_stat_archiver")
        raise TimeoutError(f"{late}; pg_stat_archiver: {dict(row or {})}") from None


def restored_proc(root: Path, data: Path, port: int) -> Proc:
    """PostgreSQL 15 alone on the restored data directory. The restored configuration is
    the primary's (written by Patroni): its port, socket, files and synchronous standbys
    are overridden, and archiving is off, so the restored server never writes to the
    repository the cluster archives into."""
    settings = {
        "port": str(port),
        "listen_addresses": "127.0.0.1",
        "unix_socket_directories": str(data),
        "hba_file": str(data / "pg_hba.conf"),
        "ident_file": str(data / "pg_ident.conf"),
        "synchronous_standby_names": "",
        "archive_mode": "off",
        "cluster_name": "restored",
    }
    args = [str(PG_BIN / "postgres"), "-D", str(data)]
    for name, value in settings.items():
        args += ["-c", f"{name}={value}"]
    return Proc(
        "restored",
        args,
        root / "restored.log",
        env={"PATH": f"{PG_BIN}:/usr/bin:/bin", "HOME": str(data.parent)},
        user=_as_postgres(),
    )


async def out_of_recovery(url: str) -> bool:
    try:
        conn = await asyncpg.connect(url, timeout=2)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
        return False  # not accepting connections yet (starting up, replaying)
    try:
        return not await conn.fetchval("SELECT pg_is_in_recovery()")
    finally:
        await conn.close()
