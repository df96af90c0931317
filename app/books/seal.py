"""The redemption history as a sealed log (`app/core/chain.py`): its blocks are
`history_blocks`, each sealed block is logged as `history_block_sealed`.

Leaf: the row's fields in a fixed text form (the time in microseconds since the epoch,
jsonb in its canonical text), joined by `|`, hashed in the database. Blocks sealed since
migration 0019 were hashed this way, so it never changes.
"""

from __future__ import annotations

from app.core.chain import Ledger

LEAF_SQL = """
sha256('\\x00'::bytea || convert_to(concat_ws('|', t.id, t.code_id, t.book_id,
    coalesce(t.user_id::text, ''), t.action, coalesce(t.actor_id::text, ''),
    (extract(epoch FROM t.at) * 1000000)::bigint, t.details::text,
    coalesce(t.reverses_id::text, '')), 'UTF8'))
"""

HISTORY = Ledger(
    name="history", table="redemption_history", blocks="history_blocks", leaf_sql=LEAF_SQL
)
