"""purchase_log and purchase_blocks: promo purchases as an append-only, sealed log

One row per purchase, written by the purchase's own statement: the reservation, promo,
unit and buyer, the price paid and its currency, and when (app/promos/purchase_log.py).
`purchase_blocks` is its hash chain, shaped like `history_blocks` (app/core/chain.py). Both
refuse UPDATE, DELETE and TRUNCATE. Purchases made before this revision are copied in, in
the order they were made (their time is the reservation's `updated_at`; the price is the
promo's price now).

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-05
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0020"
down_revision: str | Sequence[str] | None = "0019"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.execute(
        "CREATE TABLE purchase_log ("
        " id bigint GENERATED ALWAYS AS IDENTITY CONSTRAINT pk_purchase_log PRIMARY KEY,"
        " reservation_id uuid NOT NULL CONSTRAINT uq_purchase_log_reservation_id UNIQUE,"
        " promo_id uuid NOT NULL,"
        " unit_id bigint NOT NULL,"
        " user_id uuid NOT NULL,"
        " price_cents integer NOT NULL CONSTRAINT ck_purchase_log_price_cents"
        " CHECK (price_cents >= 0),"
        " currency text NOT NULL CONSTRAINT ck_purchase_log_currency"
        " CHECK (currency ~ '^[A-Z]{3}$'),"
        " at timestamptz NOT NULL DEFAULT now())"
    )
    op.execute(
        "CREATE TABLE purchase_blocks ("
        " block_no bigint CONSTRAINT pk_purchase_blocks PRIMARY KEY"
        " CONSTRAINT ck_purchase_blocks_block_no CHECK (block_no >= 1),"
        " last_id bigint NOT NULL CONSTRAINT uq_purchase_blocks_last_id UNIQUE,"
        " rows integer NOT NULL CONSTRAINT ck_purchase_blocks_rows CHECK (rows >= 0),"
        " merkle_root bytea NOT NULL,"
        " prev_hash bytea NOT NULL,"
        " block_hash bytea NOT NULL,"
        " sealed_at timestamptz NOT NULL DEFAULT now())"
    )
    op.execute(
        """
        CREATE FUNCTION append_only() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION '% is append-only (% refused)', TG_TABLE_NAME, TG_OP
                USING ERRCODE = 'restrict_violation';
        END
        $$
        """
    )
    for table in ("purchase_log", "purchase_blocks"):
        op.execute(
            f"CREATE TRIGGER trg_{table}_append_only BEFORE UPDATE OR DELETE ON {table}"
            " FOR EACH ROW EXECUTE FUNCTION append_only()"
        )
        op.execute(
            f"CREATE TRIGGER trg_{table}_no_truncate BEFORE TRUNCATE ON {table}"
            " FOR EACH STATEMENT EXECUTE FUNCTION append_only()"
        )
    op.execute(
        """
        INSERT INTO purchase_log
            (reservation_id, promo_id, unit_id, user_id, price_cents, currency, at)
        SELECT r.id, r.promo_id, r.unit_id, r.user_id, p.promo_price_cents, pr.currency,
               r.updated_at
        FROM reservations r
        JOIN promos p ON p.id = r.promo_id
        JOIN products pr ON pr.id = p.product_id
        WHERE r.status = 'purchased'
        ORDER BY r.updated_at, r.id
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE purchase_blocks")
    op.execute("DROP TABLE purchase_log")
    op.execute("DROP FUNCTION append_only")
