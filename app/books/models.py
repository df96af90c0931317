"""Coupon books, their codes, the append-only redemption history and CSV imports."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    ForeignKey,
    ForeignKeyConstraint,
    Identity,
    Index,
    SmallInteger,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import Mapped, mapped_column

from app.books.rules import LOCK_TTL_MAX_SECONDS
from app.core.models import Base, CreatedAtMixin, SealedBlockMixin


class Book(CreatedAtMixin, Base):
    __tablename__ = "books"
    __table_args__ = (
        CheckConstraint("status IN ('active', 'paused', 'archived')", name="status"),
        CheckConstraint(
            f"lock_ttl_seconds BETWEEN 1 AND {LOCK_TTL_MAX_SECONDS}", name="lock_ttl_seconds"
        ),
        CheckConstraint(
            "starts_at IS NULL OR expires_at IS NULL OR starts_at < expires_at", name="window"
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), primary_key=True, server_default=text("gen_random_uuid()")
    )
    name: Mapped[str] = mapped_column(Text)
    description: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(Text, server_default="active")
    # No ORM-side default: an explicit None (unlimited) must reach the INSERT.
    max_codes_per_user: Mapped[int | None]
    max_redemptions_per_code: Mapped[int] = mapped_column(server_default="1")
    max_redemptions_per_user: Mapped[int | None]
    lock_ttl_seconds: Mapped[int] = mapped_column(server_default="300")
    starts_at: Mapped[datetime | None]
    expires_at: Mapped[datetime | None]
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JSONB, server_default="{}")
    # Generated codes end in a check character unless a generate says otherwise.
    checksum: Mapped[bool] = mapped_column(server_default=text("false"))


class ChecksumPrefix(Base):
    """A prefix whose codes carry a check character (app/books/checksum.py); claimed by the
    first book that generated checksum codes under it."""

    __tablename__ = "checksum_prefixes"
    __table_args__ = (CheckConstraint("prefix ~ '^[A-Z0-9_-]{1,62}$'", name="prefix"),)

    prefix: Mapped[str] = mapped_column(Text, primary_key=True)
    book_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("books.id"))
    claimed_at: Mapped[datetime] = mapped_column(server_default=text("now()"))


class Code(Base):
    __tablename__ = "codes"
    __table_args__ = (
        CheckConstraint(
            "status IN ('unassigned', 'assigned', 'locked', 'redeemed')", name="status"
        ),
        CheckConstraint("redemptions >= 0", name="redemptions"),
        Index(
            "ix_codes_book_id_rand_key",
            "book_id",
            "rand_key",
            postgresql_where=text("status = 'unassigned'"),
        ),
        Index("ix_codes_user_id_book_id", "user_id", "book_id"),
        Index("ix_codes_user_id_id", "user_id", "id", postgresql_where=text("user_id IS NOT NULL")),
        Index(
            "ix_codes_book_id_locked_until",
            "book_id",
            "locked_until",
            postgresql_where=text("status = 'locked'"),
        ),
    )

    # Primary key (book_id, id): one index serves a book's listing and the key.
    book_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("books.id"), primary_key=True)
    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    code: Mapped[str] = mapped_column(Text, unique=True)
    rand_key: Mapped[float] = mapped_column(server_default=text("random()"))
    status: Mapped[str] = mapped_column(Text, server_default="unassigned")
    user_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id"))
    assigned_at: Mapped[datetime | None]
    locked_until: Mapped[datetime | None]
    lock_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    redemptions: Mapped[int] = mapped_column(server_default="0")
    updated_at: Mapped[datetime] = mapped_column(server_default=text("now()"))


class BookCodeCount(Base):
    """A book's codes by state, kept by triggers on `codes` in the statement that changes a
    code (migration 0009): `held` is assigned or locked as stored (a lapsed lock is still
    held). Each book has 16 slot rows; a writer adds to the first one no other transaction
    holds, so a book's counts are the sums of its slots (one slot may be negative)."""

    __tablename__ = "book_code_counts"
    __table_args__ = (CheckConstraint("slot BETWEEN 0 AND 15", name="slot"),)

    book_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("books.id", ondelete="CASCADE"), primary_key=True
    )
    slot: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    unassigned: Mapped[int] = mapped_column(BigInteger, server_default="0")
    held: Mapped[int] = mapped_column(BigInteger, server_default="0")
    redeemed: Mapped[int] = mapped_column(BigInteger, server_default="0")


class RedemptionHistory(Base):
    """Append-only: a trigger refuses UPDATE, DELETE and TRUNCATE."""

    __tablename__ = "redemption_history"
    __table_args__ = (
        ForeignKeyConstraint(["book_id", "code_id"], ["codes.book_id", "codes.id"]),
        Index("ix_redemption_history_action", "action", "id"),
        Index("ix_redemption_history_at", "at", "id"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    code_id: Mapped[int] = mapped_column(BigInteger)
    book_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))
    user_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    action: Mapped[str] = mapped_column(Text)
    actor_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    at: Mapped[datetime] = mapped_column(server_default=text("now()"))
    details: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default="{}")
    reverses_id: Mapped[int | None] = mapped_column(ForeignKey("redemption_history.id"))


class Import(Base):
    """One row per accepted CSV import (imports are not per-code history)."""

    __tablename__ = "imports"

    id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), primary_key=True, server_default=text("gen_random_uuid()")
    )
    book_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("books.id"))
    actor_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    at: Mapped[datetime] = mapped_column(server_default=text("now()"))
    received: Mapped[int] = mapped_column(BigInteger)
    inserted: Mapped[int] = mapped_column(BigInteger)
    duplicates_in_file: Mapped[int] = mapped_column(BigInteger, server_default="0")
    already_present: Mapped[int] = mapped_column(BigInteger, server_default="0")
    file_sha256: Mapped[str] = mapped_column(Text)


class HistoryBlock(SealedBlockMixin, Base):
    """A sealed block of the redemption history's hash chain (app/books/seal.py)."""

    __tablename__ = "history_blocks"
