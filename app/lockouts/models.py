"""Failed lookups per key (app/core/lockout.py counts them)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import CheckConstraint, Index, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from app.core.models import Base


class Lockout(Base):
    __tablename__ = "lockouts"
    __table_args__ = (
        CheckConstraint("failures >= 1", name="failures"),
        Index(
            "ix_lockouts_locked_until",
            "locked_until",
            postgresql_where=text("locked_until IS NOT NULL"),
        ),
        Index("ix_lockouts_window_started_at", "window_started_at"),
    )

    key: Mapped[str] = mapped_column(Text, primary_key=True)
    window_started_at: Mapped[datetime]
    failures: Mapped[int]
    locked_until: Mapped[datetime | None]
