"""The promo purchase log: one append-only row per purchase, sealed like the redemption
history (`app/core/chain.py`) into `purchase_blocks`; each sealed block is logged as
`purchases_block_sealed`.

A reservation's status and the sales slots (`promo_sales`) are state that purchases
update; this log is the record of the purchases themselves. The purchase statement
(`reservations._PURCHASE`) writes the row: same statement, same transaction, no round trip
of its own. Its id comes from an identity sequence and the row lands at the right edge of
the primary key, as history rows do: concurrent purchases never wait for each other on it.

Row: id, reservation, promo, unit, buyer (a random id: after erasure a pseudonym), the price
paid and its currency, and the time (`now()` of the purchase's transaction).

Leaf: SHA-256 of 0x00 and the fields in their binary send form, each fixed width, in this
order: id (8 bytes, big-endian), reservation id, promo id (16 bytes each), unit id (8),
buyer id (16), price in cents (8), currency (3 ASCII letters), time (8: microseconds since
2000-01-01 UTC, big-endian).
"""

from __future__ import annotations

from app.core.chain import Ledger

LEAF_SQL = """
sha256('\\x00'::bytea || int8send(t.id) || uuid_send(t.reservation_id)
    || uuid_send(t.promo_id) || int8send(t.unit_id) || uuid_send(t.user_id)
    || int8send(t.price_cents::bigint) || convert_to(t.currency, 'UTF8')
    || timestamptz_send(t.at))
"""

PURCHASES = Ledger(
    name="purchases", table="purchase_log", blocks="purchase_blocks", leaf_sql=LEAF_SQL
)

# The caller's purchases, for their export: through their reservations (indexed by user).
MINE = """
SELECT l.id, l.reservation_id, l.promo_id, l.unit_id, l.price_cents, l.currency, l.at
FROM reservations r JOIN purchase_log l ON l.reservation_id = r.id
WHERE r.user_id = $1
ORDER BY l.id
"""
