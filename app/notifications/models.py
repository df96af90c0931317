"""Tables of the notifications domain: inbox rows, fan-out audience and progress (the jobs
that run the fan-out live in the outbox, `app/core/outbox_model.py`)."""

from __future__ import annotations

import uuid
from datetime import date, datetime

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Identity,
    Integer,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.orm import Mapped, mapped_column

from app.core.models import Base


class Notification(Base):
    """One per user per local day (UNIQUE (user_id, day)); `id` is the receiver's dedupe key."""

    __tablename__ = "notifications"
    __table_args__ = (
        UniqueConstraint("user_id", "day"),
        CheckConstraint("status IN ('unread', 'read')", name="status"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=False), primary_key=True)
    user_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))
    promo_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), index=True)
    day: Mapped[date]
    status: Mapped[str] = mapped_column(Text, server_default="unread")
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    read_at: Mapped[datetime | None]


class NotificationAudience(Base):
    """Who a promo notifies, selected once, set-based, when its fan-out begins."""

    __tablename__ = "notification_audience"

    promo_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    user_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    day: Mapped[date]


class NotificationFanout(Base):
    """Progress of a promo's fan-out: `cursor` is the last audience user already handled."""

    __tablename__ = "notification_fanouts"
    __table_args__ = (CheckConstraint("status IN ('sending', 'done', 'cancelled')", name="status"),)

    promo_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    status: Mapped[str] = mapped_column(Text, server_default="sending")
    audience: Mapped[int] = mapped_column(Integer, server_default="0")
    notified: Mapped[int] = mapped_column(Integer, server_default="0")
    batches: Mapped[int] = mapped_column(Integer, server_default="0")
    cursor: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    started_at: Mapped[datetime] = mapped_column(server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now())
    finished_at: Mapped[datetime | None]
