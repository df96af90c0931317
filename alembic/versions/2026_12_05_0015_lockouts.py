"""lockouts: failed lookups per key (`user:<id>`, `ip:<address>`), shared by every instance

A key's first failure opens a window; more than the configured number of failures in it
sets `locked_until` to the window's end (app/core/lockout.py). Only failures write here.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-05
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0015"
down_revision: str | Sequence[str] | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        "CREATE TABLE lockouts ("
        " key text CONSTRAINT pk_lockouts PRIMARY KEY,"
        " window_started_at timestamptz NOT NULL,"
        " failures integer NOT NULL CONSTRAINT ck_lockouts_failures CHECK (failures >= 1),"
        " locked_until timestamptz)"
    )
    # The locked keys, which every instance reads again every few seconds.
    op.execute(
        "CREATE INDEX ix_lockouts_locked_until ON lockouts (locked_until)"
        " WHERE locked_until IS NOT NULL"
    )
    # The worker's purge of windows long past.
    op.execute("CREATE INDEX ix_lockouts_window_started_at ON lockouts (window_started_at)")


def downgrade() -> None:
    op.execute("DROP TABLE lockouts")
