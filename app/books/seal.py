"""Tamper-evident redemption history: a hash chain of blocks, each holding the Merkle root
of the history rows written since the block before it.

The worker seals (`HistorySealer.round`, every `HISTORY_SEAL_SECONDS`); the hot paths only
append rows as before. A block covers the ids after the previous block's `last_id` up to its
own. Ids are handed out before their transactions commit, so a row with a smaller id may
become visible after a larger one: a round notes the largest visible id and the
transactions then in progress, and a later round seals up to that id only once all of
those have ended; by then every row up to it is visible, and none can appear later. So the
lag is one round plus the longest transaction that was running.

Leaf: SHA-256 of 0x00 and the row's fields; node: SHA-256 of 0x01, left, right (an odd last
node moves up as is); block hash: SHA-256 of 0x02, the previous block's hash (zeros for the
first), block number, last id, row count and root. Each sealed block is logged
(`history_block_sealed` with its root and hash), so an outside party can hold the operator
to it: changing, deleting or inserting a sealed row changes the root of its block, and
rewriting the blocks changes every hash after it. `verify` recomputes all of it.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

import asyncpg
import structlog

from app.core.locking import LockNamespace, try_xact_lock_sql
from app.core.outbox import Conn

log = structlog.get_logger(__name__)

GENESIS = bytes(32)

# The row's fields in a fixed text form (the time in microseconds since the epoch, jsonb in
# its canonical text), hashed in the database.
LEAF_SQL = """
sha256('\\x00'::bytea || convert_to(concat_ws('|', h.id, h.code_id, h.book_id,
    coalesce(h.user_id::text, ''), h.action, coalesce(h.actor_id::text, ''),
    (extract(epoch FROM h.at) * 1000000)::bigint, h.details::text,
    coalesce(h.reverses_id::text, '')), 'UTF8'))
"""

_TURN = "SELECT " + try_xact_lock_sql(LockNamespace.HISTORY_SEAL, "'history'")
_TIP = "SELECT block_no, last_id, block_hash FROM history_blocks ORDER BY block_no DESC LIMIT 1"
_HORIZON = """
SELECT coalesce(max(h.id), 0) AS max_id,
       array(SELECT x FROM pg_snapshot_xip(pg_current_snapshot()) AS x) AS running
FROM redemption_history h
"""
_ENDED = """
SELECT coalesce(bool_and(pg_xact_status(x) IS DISTINCT FROM 'in progress'
                         OR x IS NOT DISTINCT FROM pg_current_xact_id_if_assigned()), true)
FROM unnest($1::xid8[]) AS x
"""
_LEAVES = f"""
SELECT {LEAF_SQL} AS leaf FROM redemption_history h
WHERE h.id > $1 AND h.id <= $2 ORDER BY h.id
"""
_APPEND = """
INSERT INTO history_blocks (block_no, last_id, rows, merkle_root, prev_hash, block_hash)
VALUES ($1, $2, $3, $4, $5, $6)
"""


def merkle_root(leaves: list[bytes]) -> bytes:
    """The root over the leaves in order (no leaves: 32 zero bytes)."""
    if not leaves:
        return GENESIS
    level = leaves
    while len(level) > 1:
        pairs = [
            hashlib.sha256(b"\x01" + level[i] + level[i + 1]).digest()
            for i in range(0, len(level) - 1, 2)
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


@dataclass
class HistorySealer:
    """Appends blocks; one instance per worker (several workers take turns by a lock)."""

    pending: tuple[int, list[int]] | None = None  # (largest id seen, transactions running)

    async def round(self, conn: Conn) -> Block | None:
        """Seal what the previous round saw, once it is final; note what is visible now."""
        async with conn.transaction():
            if not await conn.fetchval(_TURN):
                return None
            tip = await conn.fetchrow(_TIP)
            tip_no, tip_last, tip_hash = (
                (tip["block_no"], tip["last_id"], bytes(tip["block_hash"]))
                if tip is not None
                else (0, 0, GENESIS)
            )
            block = None
            if self.pending is not None and self.pending[0] > tip_last:
                up_to, running = self.pending
                if await conn.fetchval(_ENDED, running):
                    block = await self._seal(conn, tip_no + 1, tip_last, up_to, tip_hash)
                    tip_last = up_to
                else:
                    return None  # wait for them; keep what was noted
            horizon = await conn.fetchrow(_HORIZON)
            assert horizon is not None
            self.pending = (
                (horizon["max_id"], [int(x) for x in horizon["running"]])
                if horizon["max_id"] > tip_last
                else None
            )
            return block

    async def _seal(
        self,
        conn: Conn,
        block_no: int,
        after_id: int,
        up_to: int,
        prev_hash: bytes,
    ) -> Block:
        leaves = [bytes(r["leaf"]) for r in await conn.fetch(_LEAVES, after_id, up_to)]
        root = merkle_root(leaves)
        digest = block_hash(prev_hash, block_no, up_to, len(leaves), root)
        await conn.execute(_APPEND, block_no, up_to, len(leaves), root, prev_hash, digest)
        log.info(
            "history_block_sealed",
            block=block_no,
            last_id=up_to,
            rows=len(leaves),
            merkle_root=root.hex(),
            block_hash=digest.hex(),
        )
        return Block(block_no, up_to, len(leaves), root, digest)


@dataclass(frozen=True, slots=True)
class Verdict:
    ok: bool
    blocks: int
    rows: int
    first_bad_block: int | None


_BLOCKS = """
SELECT block_no, last_id, rows, merkle_root, prev_hash, block_hash
FROM history_blocks ORDER BY block_no
"""
_ALL_LEAVES = (
    f"SELECT h.id, {LEAF_SQL} AS leaf FROM redemption_history h WHERE h.id <= $1 ORDER BY h.id"
)


async def verify(conn: asyncpg.Connection) -> Verdict:
    """Recompute every block from the rows and the chain from the blocks; the first block
    that differs (a row changed, deleted or inserted in its range, or the block rewritten)."""
    # One snapshot for the blocks and the rows (inside a caller's transaction: its own).
    outer = conn.is_in_transaction()
    xact = conn.transaction() if outer else conn.transaction(isolation="repeatable_read")
    async with xact:
        blocks = await conn.fetch(_BLOCKS)
        if not blocks:
            return Verdict(True, 0, 0, None)
        stream = conn.cursor(_ALL_LEAVES, blocks[-1]["last_id"], prefetch=5000).__aiter__()
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
                return Verdict(False, len(blocks), sealed, b["block_no"])
            sealed += len(leaves)
            prev_hash, expected_no = bytes(b["block_hash"]), expected_no + 1
        return Verdict(True, len(blocks), sealed, None)
