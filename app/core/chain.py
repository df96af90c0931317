"""Tamper-evident logs: an append-only table sealed into a hash chain of blocks, each block
holding the Merkle root of the rows appended since the block before it.

A `Ledger` names the log (rows with a `bigint` identity `id` and a `timestamptz` `at`,
append-only by trigger), the table of its blocks and the SQL that hashes one row. The hot
paths only append rows, in their own transactions; the worker runs one `Sealer` per ledger
(`Sealer.round`, every `SEAL_SECONDS`); `verify` recomputes chains from the rows.

Order of commit, not of id: ids are handed out before their transactions commit, so a row
with a smaller id may become visible after a larger one. A round notes the largest visible
id and the transactions then in progress; a later round seals up to that id only once all
of those have ended: by then every row up to it is visible and none can appear later. This
holds because a writer has its transaction id before it takes a log id: every log insert
reads the rows that a data-modifying step of its own statement changed first, so a writer
still running is always in the snapshot's list. The lag is one round plus the longest
transaction that was running (anywhere on the server) when the round looked.

Cost: a round is one transaction of at most four statements, every one by index: the
state (the round's turn, the chain's tip, whether the noted transactions ended, the new
horizon, the age of the oldest row not sealed), the leaves of at most `max_rows` rows (a
range of the primary key after the tip; each leaf hashed in SQL), the block's insert and
the commit; the Merkle tree over the leaves is built in Python. So a block costs in
proportion to its rows and a round with nothing to seal costs the same at any size of the
log. A backlog larger than `max_rows` (after a restart, or a log backfilled by a migration)
is sealed in blocks of `max_rows`, round after round (`Sealer.backlog`). Nothing the hot
paths do waits for a sealer: it reads the log without locks, writes only its blocks table,
and its turn is an advisory lock only sealers take.

Leaf: SHA-256 of 0x00 and the row's fields (as the ledger spells them); node: SHA-256 of
0x01, left, right (an odd last node moves up as is); block hash: SHA-256 of 0x02, the
previous block's hash (zeros for the first), block number, last id, row count and root.
Each sealed block is logged (`<ledger>_block_sealed` with its root and hash) so an outside
party can hold the operator to it: changing, deleting or inserting a sealed row changes the
root of its block, and rewriting the blocks changes every hash after it.
"""

from __future__ import annotations

import asyncio
import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

import asyncpg
import structlog
from asyncpg.pool import PoolConnectionProxy
from prometheus_client import Counter, Gauge

from app.core.locking import LockNamespace, try_xact_lock_sql
from app.core.metrics import REGISTRY

log = structlog.get_logger(__name__)

Conn = asyncpg.Connection | PoolConnectionProxy

GENESIS = bytes(32)
# Rows in one block at most: a round's work (and the time it holds the event loop of the
# process it runs in) is bounded however far behind it is. A block this size took 30-90 ms
# to seal here, most of it in the database (`make bench-seal`).
MAX_BLOCK_ROWS = 10_000

SEALED_ROWS = Counter(
    "chain_sealed_rows_total",
    "Log rows sealed into the hash chain by this process's sealer, by log.",
    ["log"],
    registry=REGISTRY,
)
SEAL_LAG = Gauge(
    "chain_seal_lag_seconds",
    "Age of the oldest log row not yet sealed when this process's sealer last looked, by log"
    " (0: everything visible was sealed).",
    ["log"],
    registry=REGISTRY,
)


@dataclass(frozen=True)
class Ledger:
    """An append-only table and the chain that seals it. `leaf_sql` hashes one row of the
    table, aliased `t`, to 32 bytes; it must not change once blocks were sealed with it."""

    name: str
    table: str
    blocks: str
    leaf_sql: str
    # The statements, built once from the names above.
    state_sql: str = field(init=False, repr=False)
    leaves_sql: str = field(init=False, repr=False)
    append_sql: str = field(init=False, repr=False)
    blocks_sql: str = field(init=False, repr=False)
    all_leaves_sql: str = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # $1: the transactions a previous round noted as running. One statement, so one
        # snapshot: the largest visible id and the transactions running are of one moment.
        state = f"""
SELECT {try_xact_lock_sql(LockNamespace.LEDGER_SEAL, "$2::text")} AS turn,
       tip.block_no, tip.last_id, tip.block_hash,
       (SELECT coalesce(bool_and(pg_xact_status(x) IS DISTINCT FROM 'in progress'
                                 OR x IS NOT DISTINCT FROM pg_current_xact_id_if_assigned()),
                        true)
        FROM unnest($1::xid8[]) AS x) AS ended,
       (SELECT coalesce(max(t.id), 0) FROM {self.table} t) AS max_id,
       array(SELECT x FROM pg_snapshot_xip(pg_current_snapshot()) AS x) AS running,
       (SELECT extract(epoch FROM clock_timestamp() - t.at)::float8 FROM {self.table} t
        WHERE t.id > coalesce(tip.last_id, 0) ORDER BY t.id LIMIT 1) AS oldest_unsealed_s
FROM (SELECT 1) AS one
LEFT JOIN LATERAL (
    SELECT b.block_no, b.last_id, b.block_hash FROM {self.blocks} b
    ORDER BY b.block_no DESC LIMIT 1
) AS tip ON true
"""
        leaves = f"""
SELECT t.id, {self.leaf_sql} AS leaf FROM {self.table} t
WHERE t.id > $1 AND t.id <= $2 ORDER BY t.id LIMIT $3
"""
        append = f"""
INSERT INTO {self.blocks} (block_no, last_id, rows, merkle_root, prev_hash, block_hash)
VALUES ($1, $2, $3, $4, $5, $6)
"""
        blocks = f"""
SELECT block_no, last_id, rows, merkle_root, prev_hash, block_hash
FROM {self.blocks} ORDER BY block_no
"""
        all_leaves = f"""
SELECT t.id, {self.leaf_sql} AS leaf FROM {self.table} t WHERE t.id <= $1 ORDER BY t.id
"""
        for name, sql in (
            ("state_sql", state),
            ("leaves_sql", leaves),
            ("append_sql", append),
            ("blocks_sql", blocks),
            ("all_leaves_sql", all_leaves),
        ):
            object.__setattr__(self, name, sql)


def merkle_root(leaves: Sequence[bytes]) -> bytes:
    """The root over the leaves in order (no leaves: 32 zero bytes)."""
    if not leaves:
        return GENESIS
    level = list(leaves)
    sha256 = hashlib.sha256
    while len(level) > 1:
        pairs = [
            sha256(b"\x01" + level[i] + level[i + 1]).digest() for i in range(0, len(level) - 1, 2)
        ]
        if len(level) % 2:
            pairs.append(level[-1])
        level = pairs
    return level[0]


def block_hash(prev_hash: bytes, block_no: int, last_id: int, rows: int, root: bytes) -> bytes:
    packed = struct.pack(">qqq", block_no, last_id, rows)
    return hashlib.sha256(b"\x02" + prev_hash + packed + root).digest()


@dataclass(frozen=True, slots=True)
class Block:
    block_no: int
    last_id: int
    rows: int
    merkle_root: bytes
    block_hash: bytes


@dataclass(frozen=True, slots=True)
class Horizon:
    """What a round saw: the largest visible id and the transactions then running.
    `final` once those have all ended: every row up to `up_to` is visible for good."""

    up_to: int
    running: list[int]
    final: bool = False


@dataclass
class Sealer:
    """Appends the blocks of one ledger; one per ledger in every worker (workers take turns
    by an advisory lock; the primary key on `block_no` keeps a chain from forking anyway)."""

    ledger: Ledger
    max_rows: int = MAX_BLOCK_ROWS
    pending: Horizon | None = None
    # The last round sealed a full block and more is final: run again without waiting.
    backlog: bool = False

    async def round(self, conn: Conn) -> Block | None:
        """Seal (at most `max_rows` of) what an earlier round saw, once it is final; note
        what is visible now. The block sealed, if any."""
        self.backlog = False
        try:
            return await self._round(conn)
        except asyncpg.UniqueViolationError:
            # Another sealer appended this block between our snapshot and our turn.
            return None

    async def _round(self, conn: Conn) -> Block | None:
        ledger = self.ledger
        async with conn.transaction():
            pending = self.pending
            running = pending.running if pending is not None and not pending.final else []
            state = await conn.fetchrow(ledger.state_sql, running, ledger.name)
            assert state is not None
            if not state["turn"]:
                return None
            SEAL_LAG.labels(ledger.name).set(state["oldest_unsealed_s"] or 0.0)
            tip_no = state["block_no"] or 0
            tip_last = state["last_id"] or 0
            tip_hash = bytes(state["block_hash"]) if state["block_hash"] is not None else GENESIS
            if pending is not None and pending.up_to <= tip_last:
                pending = None  # sealed past it already (by another sealer)
            if pending is not None and not pending.final and state["ended"]:
                pending = Horizon(pending.up_to, [], final=True)
            block = None
            if pending is not None and pending.final:
                block = await self._seal(conn, tip_no + 1, tip_last, pending.up_to, tip_hash)
                tip_last = block.last_id
                if tip_last < pending.up_to:
                    self.backlog = True
                else:
                    pending = None
            if pending is None and state["max_id"] > tip_last:
                pending = Horizon(state["max_id"], [int(x) for x in state["running"]])
            self.pending = pending
            return block

    async def _seal(
        self, conn: Conn, block_no: int, after_id: int, up_to: int, prev_hash: bytes
    ) -> Block:
        ledger = self.ledger
        rows = await conn.fetch(ledger.leaves_sql, after_id, up_to, self.max_rows)
        leaves = [bytes(r["leaf"]) for r in rows]
        # A full block may stop short of `up_to`; otherwise it reaches it (ids past the
        # last row were taken by transactions that rolled back).
        last_id = rows[-1]["id"] if len(rows) == self.max_rows else up_to
        root = merkle_root(leaves)
        digest = block_hash(prev_hash, block_no, last_id, len(leaves), root)
        await conn.execute(
            ledger.append_sql, block_no, last_id, len(leaves), root, prev_hash, digest
        )
        SEALED_ROWS.labels(ledger.name).inc(len(leaves))
        log.info(
            f"{ledger.name}_block_sealed",
            block=block_no,
            last_id=last_id,
            rows=len(leaves),
            merkle_root=root.hex(),
            block_hash=digest.hex(),
        )
        return Block(block_no, last_id, len(leaves), root, digest)


async def seal(conn: Conn, sealers: Sequence[Sealer], budget: float) -> bool:
    """A round of every sealer, then more rounds of those with a backlog (full blocks),
    taking turns, for up to `budget` seconds; whether a backlog is left for the next call."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + budget
    due = list(sealers)
    while True:
        for sealer in due:
            await sealer.round(conn)
        due = [s for s in due if s.backlog]
        if not due:
            return False
        if loop.time() >= deadline:
            return True
        await asyncio.sleep(0)  # between blocks, whatever else the event loop has to run


@dataclass(frozen=True, slots=True)
class Verdict:
    log: str
    ok: bool
    blocks: int
    rows: int
    first_bad_block: int | None


async def verify(conn: Conn, ledgers: Sequence[Ledger]) -> list[Verdict]:
    """Recompute every block of each ledger from its rows and each chain from its blocks;
    per ledger, the first block that differs (a row changed, deleted or inserted in its
    range, or the block rewritten)."""
    # One snapshot for the blocks and the rows (inside a caller's transaction: its own).
    outer = conn.is_in_transaction()
    xact = conn.transaction() if outer else conn.transaction(isolation="repeatable_read")
    async with xact:
        return [await _verify_one(conn, ledger) for ledger in ledgers]


async def _verify_one(conn: Conn, ledger: Ledger) -> Verdict:
    blocks = await conn.fetch(ledger.blocks_sql)
    if not blocks:
        return Verdict(ledger.name, True, 0, 0, None)
    stream = conn.cursor(ledger.all_leaves_sql, blocks[-1]["last_id"], prefetch=5000).__aiter__()
    pending: asyncpg.Record | None = None
    prev_hash, sealed, expected_no = GENESIS, 0, 1
    for b in blocks:
        leaves: list[bytes] = []
        while True:
            if pending is None:
                pending = await anext(stream, None)
            if pending is None or pending["id"] > b["last_id"]:
                break
            leaves.append(bytes(pending["leaf"]))
            pending = None
        root = merkle_root(leaves)
        good = (
            b["block_no"] == expected_no
            and bytes(b["prev_hash"]) == prev_hash
            and b["rows"] == len(leaves)
            and bytes(b["merkle_root"]) == root
            and bytes(b["block_hash"])
            == block_hash(prev_hash, b["block_no"], b["last_id"], len(leaves), root)
        )
        if not good:
            return Verdict(ledger.name, False, len(blocks), sealed, b["block_no"])
        sealed += len(leaves)
        prev_hash, expected_no = bytes(b["block_hash"]), expected_no + 1
    return Verdict(ledger.name, True, len(blocks), sealed, None)
