"""Fault injection: a suite-owned embedded PostgreSQL cluster (never the system server),
the service as a subprocess, and faults injected while clients run. Opt-in: the tests
here run only with RUN_FAULTS=1 (`make test-faults`) and skip otherwise."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from tests.faults.harness import Cluster


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    """A private embedded PostgreSQL, migrated to head, deleted afterwards."""
    from app.core.embedded import start_embedded
    from app.core.migrations import upgrade_to_head

    tmp = Path(tempfile.mkdtemp(prefix="cf-faults-"))
    tmp.chmod(0o755)
    server, url = start_embedded(tmp, cleanup="delete")
    cluster = Cluster(server=server, url=url, workdir=tmp)
    try:
        upgrade_to_head(url)
        yield cluster
    finally:
        cluster.stop()
        server.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
async def pg(cluster: Cluster) -> AsyncIterator[asyncpg.Connection]:
    """A direct connection for seeding and checking (reconnect after a restart)."""
    conn = await asyncpg.connect(cluster.url)
    try:
        yield conn
    finally:
        if not conn.is_closed():
            await asyncio.wait_for(conn.close(), 5)
