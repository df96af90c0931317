"""`make test-restore`: the backup and point-in-time restore drill, on the topology of `make
test-ha` (three PostgreSQL 15 under Patroni, etcd). pgBackRest keeps a repository under the
run's temporary directory; every node archives its WAL there (`archive_command`, set through
its Patroni configuration) and a full backup is taken from the primary. The service writes
through its API (assign, lock and redeem, reserve and purchase; the worker seals the logs)
before the backup, then after it across a switchover (the new primary archives on the next
timeline); a target time T is noted once that WAL is archived, and more is written after
it. The backup is restored to T into a fresh data directory and started as a standalone
PostgreSQL 15; there, `python -m app check` must pass (the sealed logs' chains included),
every row of T must be there as it was, and nothing written after T. Prints one `restore:`
line; exits 1 on any failure. Everything it starts is stopped, and its data deleted,
however it ends."""

from __future__ import annotations

import asyncio
import datetime as dt
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx

from app.audit.ledgers import LEDGERS
from app.core import chain
from bench.common import free_port
from tests.faults.harness import API, seed_book, seed_held_codes, seed_promo, seed_users
from tests.ha.backrest import (
    archive_parameters,
    archived,
    backrest,
    backup_sizes,
    node_options,
    out_of_recovery,
    own,
    restored_proc,
    write_backrest_config,
)
from tests.ha.load import Load
from tests.ha.topology import (
    Node,
    Topology,
    api_proc,
    api_ready,
    app_check,
    create_and_migrate,
    patroni_switchover,
    poll_until,
    run_in_topology,
    start_database,
    worker_proc,
)

CODES = 100_000  # in the book the drill assigns from: a backup of some size
WRITES = 5  # of each kind (assign, lock + redeem, reserve + purchase) in each phase
RECOVERY_TIMEOUT_S = 300
# What the drill's writes change, compared whole between the primary at T and the restored
# server: the service's state and its append-only logs with their sealed blocks.
COMPARED = (
    "codes",
    "book_code_counts",
    "redemption_history",
    "history_blocks",
    "reservations",
    "promo_units",
    "promo_sales",
    "purchase_log",
    "purchase_blocks",
)


# The service's writes ------------------------------------------------------------------


@dataclass
class Written:
    """What one phase was told by the API: codes assigned (code -> user), redemptions (by
    order_ref) and purchased reservations."""

    tag: str
    assigned: dict[str, uuid.UUID] = field(default_factory=dict)
    redeemed: list[str] = field(default_factory=list)
    purchased: list[str] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.assigned) + len(self.redeemed) + len(self.purchased)


async def write(load: Load, tag: str, n: int = WRITES) -> Written:
    """`n` assigns, lock + redeems and reserve + purchases through the API, one at a time,
    each acknowledged. As the client contract says (docs/ha.md): a 503 did nothing and is
    sent again, an unknown outcome is settled with its key; any other answer fails."""
    done = Written(tag)

    async def ok(op: str, user: int, path: str, body: dict[str, Any]) -> dict[str, Any]:
        deadline = time.monotonic() + 60
        while True:
            out = await load.send(op, user, f"{API}{path}", body)
            if out.kind == "unknown":
                await load.resolve([out])
                out.kind = out.final
            if out.kind == "ok" and out.result is not None:
                return out.result
            if out.status != 503 or time.monotonic() > deadline:
                raise AssertionError(f"{tag} {op}: {out.status} {out.kind} {load.bad[-1:]}")
            await asyncio.sleep(0.5)

    for i in range(n):
        user = i % 2
        assigned = await ok("assign", user, f"/books/{load.book}/assign", {})
        done.assigned[assigned["code"]] = load.users[user].id
        user = 2 + i % 2
        code = load.held[user]
        lock = await ok("lock", user, f"/codes/{code}/lock", {"ttl_seconds": 30})
        ref = f"{tag}-{i}-{uuid.uuid4().hex[:8]}"
        await ok(
            "redeem", user, f"/codes/{code}/redeem", {"lock_id": lock["lock_id"], "order_ref": ref}
        )
        done.redeemed.append(ref)
        user = 4 + i % 2
        held = await ok("reserve", user, f"/promos/{load.promo}/reserve", {})
        await ok("purchase", user, f"/reservations/{held['id']}/purchase", {})
        done.purchased.append(held["id"])
    return done


async def sealed(conn: asyncpg.Connection) -> bool:
    """Every row of each sealed log is in a block (the worker seals every second)."""
    for ledger in LEDGERS:
        behind = await conn.fetchval(
            f"SELECT (SELECT coalesce(max(id), 0) FROM {ledger.table})"
            f" > (SELECT coalesce(max(last_id), 0) FROM {ledger.blocks})"
        )
        if behind:
            return False
    return True


async def digest(conn: asyncpg.Connection) -> dict[str, tuple[int, str]]:
    """Per compared table, its row count and a hash of all its rows (in text form, sorted)."""
    await conn.execute("SET TimeZone = 'UTC'")
    out = {}
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        for table in COMPARED:
            row = await conn.fetchrow(
                f"SELECT count(*) AS n, coalesce(md5(string_agg(t::text, E'\\n'"
                f" ORDER BY t::text)), '') AS h FROM {table} t"
            )
            assert row is not None
            out[table] = (row["n"], row["h"])
    return out


async def after_rows(conn: asyncpg.Connection, after: Written, mark: dict[str, int]) -> int:
    """Rows of the phase after T in this database: log rows (its redemptions, assigns and
    purchases) and blocks past T's last ones, its codes held, its purchased reservations."""
    n = 0
    for ledger in LEDGERS:
        n += await conn.fetchval(
            f"SELECT count(*) FROM {ledger.table} WHERE id > $1", mark[ledger.table]
        )
        n += await conn.fetchval(
            f"SELECT count(*) FROM {ledger.blocks} WHERE block_no > $1", mark[ledger.blocks]
        )
    n += await conn.fetchval(
        "SELECT count(*) FROM codes WHERE code = ANY($1::text[]) AND user_id IS NOT NULL",
        list(after.assigned),
    )
    n += await conn.fetchval(
        "SELECT count(*) FROM reservations WHERE id = ANY($1::uuid[]) AND status = 'purchased'",
        after.purchased,
    )
    return int(n)


async def missing_before(conn: asyncpg.Connection, phases: list[Written]) -> list[str]:
    """What the API acknowledged before T and this database does not hold (as told)."""
    missing = []
    for phase in phases:
        held = {
            r["code"]: r["user_id"]
            for r in await conn.fetch(
                "SELECT code, user_id FROM codes WHERE code = ANY($1::text[])",
                list(phase.assigned),
            )
        }
        missing += [f"assign {c}" for c, u in phase.assigned.items() if held.get(c) != u]
        refs = {
            r["ref"]: r["n"]
            for r in await conn.fetch(
                "SELECT details->>'order_ref' AS ref, count(*) AS n FROM redemption_history"
                " WHERE action = 'redeemed' AND details->>'order_ref' = ANY($1::text[])"
                " GROUP BY 1",
                phase.redeemed,
            )
        }
        missing += [f"redeem {r}" for r in phase.redeemed if refs.get(r) != 1]
        bought = {
            str(r["id"])
            for r in await conn.fetch(
                "SELECT r.id FROM reservations r JOIN purchase_log l ON l.reservation_id = r.id"
                " WHERE r.id = ANY($1::uuid[]) AND r.status = 'purchased'",
                phase.purchased,
            )
        }
        missing += [f"purchase {p}" for p in phase.purchased if p not in bought]
    return missing


async def marks(conn: asyncpg.Connection) -> dict[str, int]:
    """The last id of each sealed log and the last block number of each chain."""
    out = {}
    for ledger in LEDGERS:
        out[ledger.table] = await conn.fetchval(f"SELECT coalesce(max(id), 0) FROM {ledger.table}")
        out[ledger.blocks] = await conn.fetchval(
            f"SELECT coalesce(max(block_no), 0) FROM {ledger.blocks}"
        )
    return out


# The cluster -----------------------------------------------------------------------------


def healthy(topo: Topology, leader: Node) -> bool:
    """`leader` leads and both other nodes stream."""
    current = topo.leader()
    return current is not None and current.name == leader.name and topo.healthy()


# The drill -----------------------------------------------------------------------------


async def run(topo: Topology) -> int:
    started = time.monotonic()
    root = topo.root
    write_backrest_config(root)  # before any node starts: their archive_command reads it
    await asyncio.to_thread(start_database, topo)
    leader = topo.leader()
    assert leader is not None
    print(f"[restore] three Patroni nodes up, {leader.name} leads", flush=True)
    pg1 = node_options(leader.data, leader.pg_port, leader.home)
    backrest(root, "stanza-create", *pg1)
    backrest(root, "check", *pg1)

    await create_and_migrate(topo)
    pg = await asyncpg.connect(leader.url)
    users = await seed_users(pg, 6)
    book = await seed_book(pg, CODES)
    held_by_id = await seed_held_codes(pg, users[2:4], uses=1000)
    promo = await seed_promo(pg, 1000)
    api = topo.start(api_proc(topo, 0, topo.proxy_url))
    topo.start(worker_proc(topo, 0, topo.proxy_url))
    port = topo.api_ports[0]

    async def api_up() -> bool:
        if not api.alive():
            raise AssertionError(f"the API exited: {api.log.read_text()[-3000:]}")
        return await asyncio.to_thread(api_ready, port)

    try:
        await poll_until(f"API on {port}", api_up, 60)
    except TimeoutError:
        print(api.log.read_text()[-3000:], flush=True)
        raise

    failures: list[str] = []
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
        held = {i: held_by_id[users[i].id] for i in (2, 3)}
        load = Load(http, users, book, held, promo)
        in_backup = await write(load, "in-backup")
        backup_s = backrest(root, "backup", *pg1, "--type=full")
        print(
            f"[restore] full backup from the primary {leader.name}: {backup_sizes(root)}",
            flush=True,
        )
        # The WAL after the backup crosses a switchover: the new primary archives into the
        # same repository, on the next timeline, and the restore follows it.
        candidate = next(n for n in topo.nodes if n is not leader)
        t0 = time.monotonic()
        await asyncio.to_thread(patroni_switchover, leader, candidate)
        await poll_until(
            "the cluster healthy again", lambda: asyncio.to_thread(healthy, topo, candidate), 90
        )
        print(
            f"[restore] switchover {leader.name} -> {candidate.name}:"
            f" {time.monotonic() - t0:.1f} s until the old primary streams",
            flush=True,
        )
        await pg.close()
        pg = await asyncpg.connect(candidate.url)
        in_wal = await write(load, "before-target")
        await poll_until("the logs sealed", lambda: sealed(pg), 60)
        await archived(pg)
        at_target = await digest(pg)
        mark = await marks(pg)
        target: dt.datetime = await pg.fetchval("SELECT clock_timestamp()")
        target_text = target.astimezone(dt.UTC).isoformat(sep=" ")
        print(
            f"[restore] target {target_text}: {in_backup.count} writes before the backup,"
            f" {in_wal.count} after it; {sum(n for n, _ in at_target.values())} rows compared",
            flush=True,
        )
        after = await write(load, "after-target")
        await poll_until("the logs sealed", lambda: sealed(pg), 60)
        await archived(pg)
        on_primary = await after_rows(pg, after, mark)
    await pg.close()
    if on_primary == 0:
        failures.append("the writes after the target left no row on the primary")
    print(f"[restore] {after.count} writes after the target: {on_primary} rows", flush=True)

    # Restore into a fresh data directory and start it alone.
    data = own(root / "restored")
    restore_s = backrest(
        root,
        "restore",
        f"--pg1-path={data}",
        "--type=time",
        f"--target={target_text}",
        "--target-action=promote",
    )
    port = free_port()
    url = f"postgresql://postgres@127.0.0.1:{port}/couponflash"
    t0 = time.monotonic()
    topo.start(restored_proc(root, data, port))
    await poll_until(
        "the restored server out of recovery", lambda: out_of_recovery(url), RECOVERY_TIMEOUT_S, 0.1
    )
    recovery_s = time.monotonic() - t0  # start, replay to the target, promotion
    check = await asyncio.to_thread(app_check, url)
    print(f"[restore] restored and promoted in {recovery_s:.1f} s; app check: {check}", flush=True)

    conn = await asyncpg.connect(url)
    try:
        restored = await digest(conn)
        for table in COMPARED:
            if restored[table] != at_target[table]:
                failures.append(
                    f"{table}: {restored[table][0]} rows, {at_target[table][0]} at the target"
                    " (or the same count, other contents)"
                )
        missing = await missing_before(conn, [in_backup, in_wal])
        failures += [f"missing {m}" for m in missing]
        leaked = await after_rows(conn, after, mark)
        if leaked:
            failures.append(f"{leaked} rows written after the target are in the restore")
        verdicts = await chain.verify(conn, LEDGERS)
        failures += [
            f"{v.log} chain broken at block {v.first_bad_block}" for v in verdicts if not v.ok
        ]
        if not all(v.blocks for v in verdicts):
            failures.append(f"a chain has no block: {verdicts}")
        timeline = (await conn.fetchval("SELECT pg_walfile_name(pg_current_wal_lsn())"))[:8]
    finally:
        await conn.close()
    chains = ", ".join(f"{v.log} {v.blocks} blocks / {v.rows} rows" for v in verdicts)
    print(f"[restore] chains verified: {chains}; restored timeline {timeline}", flush=True)
    present = sum(at_target[t][0] for t in COMPARED if restored[t] == at_target[t])
    for failure in failures:
        print(f"[restore] FAIL {failure}", flush=True)
    print(
        f"restore: backup {backup_s:.1f} s, restore {restore_s + recovery_s:.1f} s"
        f" (files {restore_s:.1f} s, recovery to the target {recovery_s:.1f} s),"
        f" rows before target {present} present ({in_backup.count + in_wal.count} writes"
        f" acknowledged, {len(missing)} missing), rows after target {leaked},"
        f" check {'ok' if check.endswith(' 0 failed') else check},"
        f" chains {'ok' if all(v.ok for v in verdicts) else 'BROKEN'};"
        f" {time.monotonic() - started:.0f} s in all",
        flush=True,
    )
    return 1 if failures else 0


def main() -> int:
    return run_in_topology(
        run, api_instances=1, parameters=archive_parameters, prefix="cf-restore-"
    )


if __name__ == "__main__":
    sys.exit(main())
