"""users.erased_at: a person erased at their request

Erasure keeps the row under its random id (a pseudonym once nothing else is left): email,
password, location, birth date, tags and external id are wiped, so the history, the
counts and the limits that refer to the id still hold (docs/privacy.md).

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-05
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0018"
down_revision: str | Sequence[str] | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.execute("ALTER TABLE users ADD COLUMN erased_at timestamptz")


def downgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.execute("ALTER TABLE users DROP COLUMN erased_at")
