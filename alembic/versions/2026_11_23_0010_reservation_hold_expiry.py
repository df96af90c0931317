"""reservation_holds: held reservations by expiry per promo, and by age for the sweep

Reserve takes a lapsed unit when no unit is free: "the hold of this promo that lapsed first".
Without an index that orders a promo's holds by expiry it read every held unit of the promo
and probed its reservation (about 4,500 buffers at 2,000 held units); with
`(promo_id, expires_at) WHERE status = 'held'` it reads the first lapsed hold. The worker's
sweep retires the lapsed holds of every promo, oldest first, a bounded batch at a time:
`(created_at) WHERE status = 'held'` (a hold lapses a fixed TTL after it is created). The
sweep's index orders by creation, not expiry, so that a reserve, which orders one promo's
holds by expiry, cannot pick it and walk the holds of every promo. Both cover only holds,
which the claims and the sweep keep few, whatever the size of the table.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-23
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0010"
down_revision: str | Sequence[str] | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Building an index blocks writes to reservations (reserve, purchase, cancel) while it
    # reads the table: give up rather than queue the hot paths behind a long lock.
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.execute(
        "CREATE INDEX ix_reservations_promo_id_expires_at_held"
        " ON reservations (promo_id, expires_at) WHERE status = 'held'"
    )
    op.execute(
        "CREATE INDEX ix_reservations_created_at_held ON reservations (created_at)"
        " WHERE status = 'held'"
    )


def downgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.execute("DROP INDEX ix_reservations_created_at_held")
    op.execute("DROP INDEX ix_reservations_promo_id_expires_at_held")
