"""promo_sales: units sold counted in 16 slots per promo, off the promo row

A purchase used to add one to `promos.sold` (and set `sold_out_at`), so every purchase of a
promo queued on that row until its commit. It now adds one to the slot `seq % 16` of its
unit; a promo's sold count is the sum of its slots and "sold out" is derived from it, so it
cannot drift from the units.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-23
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # 16 is `app.promos.rules.SALES_SLOTS` as it was then; a migration keeps its own literal
    # so that it still creates the same table if the constant ever changes (which would need
    # a migration of its own: a wider slot CHECK and the sales re-counted into the new slots).
    op.execute(
        """
        CREATE TABLE promo_sales (
            promo_id uuid NOT NULL CONSTRAINT fk_promo_sales_promo_id_promos
                REFERENCES promos (id) ON DELETE CASCADE,
            slot smallint NOT NULL CONSTRAINT ck_promo_sales_slot CHECK (slot BETWEEN 0 AND 15),
            sold integer NOT NULL CONSTRAINT ck_promo_sales_sold CHECK (sold > 0),
            last_sold_at timestamptz NOT NULL,
            CONSTRAINT pk_promo_sales PRIMARY KEY (promo_id, slot)
        )
        """
    )
    op.execute(
        """
        INSERT INTO promo_sales (promo_id, slot, sold, last_sold_at)
        SELECT u.promo_id, u.seq % 16, count(*), coalesce(max(r.updated_at), now())
        FROM promo_units u
        LEFT JOIN reservations r ON r.unit_id = u.id AND r.status = 'purchased'
        WHERE u.state = 'sold'
        GROUP BY u.promo_id, u.seq % 16
        """
    )
    op.execute("DROP INDEX ix_promos_live")
    op.execute(
        "CREATE INDEX ix_promos_live ON promos (ends_at) WHERE active AND cancelled_at IS NULL"
    )
    op.execute("ALTER TABLE promos DROP COLUMN sold, DROP COLUMN sold_out_at")


def downgrade() -> None:
    op.execute(
        "ALTER TABLE promos ADD COLUMN sold integer NOT NULL DEFAULT 0,"
        " ADD COLUMN sold_out_at timestamptz"
    )
    op.execute(
        """
        UPDATE promos p SET sold = t.sold,
            sold_out_at = CASE WHEN t.sold >= p.quantity THEN t.last_sold_at END
        FROM (SELECT promo_id, sum(sold)::int AS sold, max(last_sold_at) AS last_sold_at
              FROM promo_sales GROUP BY promo_id) t
        WHERE p.id = t.promo_id
        """
    )
    op.execute(
        "ALTER TABLE promos ADD CONSTRAINT ck_promos_sold CHECK (sold BETWEEN 0 AND quantity)"
    )
    op.execute("DROP INDEX ix_promos_live")
    op.execute(
        "CREATE INDEX ix_promos_live ON promos (ends_at) "
        "WHERE active AND cancelled_at IS NULL AND sold_out_at IS NULL"
    )
    op.execute("DROP TABLE promo_sales")
