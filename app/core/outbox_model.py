"""The outbox table (`app/core/outbox.py` reads and writes it)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, CheckConstraint, Identity, Index, Integer, Text, func, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from app.core.models import Base


class OutboxJob(Base):
    """A unit of background work; `status = 'dead'` rows are the dead letters. A keyed job
    (`key` not NULL) is pending at most once per (topic, key)."""

    __tablename__ = "outbox"
    __table_args__ = (
        CheckConstraint(
            "status IN ('pending', 'running', 'done', 'dead', 'cancelled')", name="status"
        ),
        Index("ix_outbox_due", "run_at", "id", postgresql_where=text("status = 'pending'")),
        Index("ix_outbox_running", "locked_at", postgresql_where=text("status = 'running'")),
        Index("ix_outbox_dead", "id", postgresql_where=text("status = 'dead'")),
        Index(
            "ix_outbox_finished",
            "updated_at",
            postgresql_where=text("status IN ('done', 'cancelled')"),
        ),
        Index(
            "uq_outbox_pending_topic_key",
            "topic",
            "key",
            unique=True,
            postgresql_where=text("status = 'pending'"),
        ),
        Index("ix_outbox_topic_key", "topic", "key", postgresql_where=text("key IS NOT NULL")),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=False), primary_key=True)
    topic: Mapped[str] = mapped_column(Text)
    key: Mapped[str | None] = mapped_column(Text)
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default="{}")
    run_at: Mapped[datetime] = mapped_column(server_default=func.now())
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    max_attempts: Mapped[int] = mapped_column(Integer, server_default="8")
    last_error: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(Text, server_default="pending")
    locked_by: Mapped[str | None] = mapped_column(Text)
    locked_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now())
