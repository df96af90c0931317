"""outbox_topic_keys: keyed jobs identified by (topic, key), the key being the subject's id

The outbox knew promos: a promo's start job had the key `promo.started:<promo id>`, and the
worker locked and recovered it by `payload->>'promo_id'`. A keyed job is now pending at most
once per (topic, key), with the key the bare id of what it is about (a promo's start:
topic `promo.started`, key the promo id); the lock of a keyed job is taken on the same pair.
Existing rows move with it (done and cancelled ones too, so history reads the same).

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-23
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # The outbox takes every fan-out batch's webhook job: do not queue behind a long lock.
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.execute("DROP INDEX uq_outbox_pending_key")
    op.execute(
        """
        UPDATE outbox SET key = payload->>'promo_id'
        WHERE topic = 'promo.started' AND key IS NOT NULL AND payload ? 'promo_id'
        """
    )
    op.execute(
        "CREATE UNIQUE INDEX uq_outbox_pending_topic_key ON outbox (topic, key)"
        " WHERE status = 'pending'"
    )
    op.execute("CREATE INDEX ix_outbox_topic_key ON outbox (topic, key) WHERE key IS NOT NULL")


def downgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.execute("DROP INDEX ix_outbox_topic_key")
    op.execute("DROP INDEX uq_outbox_pending_topic_key")
    op.execute("UPDATE outbox SET key = topic || ':' || key WHERE key IS NOT NULL")
    op.execute("CREATE UNIQUE INDEX uq_outbox_pending_key ON outbox (key) WHERE status = 'pending'")
