"""history_blocks: the redemption history's hash chain (app/books/seal.py)

One row per sealed block: the last history id it covers (it starts after the previous
block's), its row count, the Merkle root of those rows, the previous block's hash and its own.
Append-only like the history.

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-05
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0019"
down_revision: str | Sequence[str] | None = "0018"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        "CREATE TABLE history_blocks ("
        " block_no bigint CONSTRAINT pk_history_blocks PRIMARY KEY"
        " CONSTRAINT ck_history_blocks_block_no CHECK (block_no >= 1),"
        " last_id bigint NOT NULL CONSTRAINT uq_history_blocks_last_id UNIQUE,"
        " rows integer NOT NULL CONSTRAINT ck_history_blocks_rows CHECK (rows >= 0),"
        " merkle_root bytea NOT NULL,"
        " prev_hash bytea NOT NULL,"
        " block_hash bytea NOT NULL,"
        " sealed_at timestamptz NOT NULL DEFAULT now())"
    )
    op.execute(
        """
        CREATE FUNCTION history_blocks_append_only() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'history_blocks is append-only (% refused)', TG_OP
                USING ERRCODE = 'restrict_violation';
        END
        $$
        """
    )
    op.execute(
        "CREATE TRIGGER trg_history_blocks_append_only BEFORE UPDATE OR DELETE"
        " ON history_blocks FOR EACH ROW EXECUTE FUNCTION history_blocks_append_only()"
    )
    op.execute(
        "CREATE TRIGGER trg_history_blocks_no_truncate BEFORE TRUNCATE ON history_blocks"
        " FOR EACH STATEMENT EXECUTE FUNCTION history_blocks_append_only()"
    )


def downgrade() -> None:
    op.execute("DROP TABLE history_blocks")
    op.execute("DROP FUNCTION history_blocks_append_only")
