"""idempotency_keys.location: a replayed 201 carries its Location header again

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-23
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("ALTER TABLE idempotency_keys ADD COLUMN location text")


def downgrade() -> None:
    op.execute("ALTER TABLE idempotency_keys DROP COLUMN location")
