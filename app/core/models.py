"""Declarative base shared by every domain's tables."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, CheckConstraint, DateTime, MetaData, func
from sqlalchemy.orm import DeclarativeBase, Mapped, declared_attr, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: DateTime(timezone=True)}


class CreatedAtMixin:
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())


class SealedBlockMixin:
    """The columns of a block in a log's hash chain (app/core/chain.py): one table per log."""

    @declared_attr.directive
    def __table_args__(cls) -> tuple[Any, ...]:
        return (
            CheckConstraint("block_no >= 1", name="block_no"),
            CheckConstraint("rows >= 0", name="rows"),
        )

    block_no: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    last_id: Mapped[int] = mapped_column(BigInteger, unique=True)
    rows: Mapped[int]
    merkle_root: Mapped[bytes]
    prev_hash: Mapped[bytes]
    block_hash: Mapped[bytes]
    sealed_at: Mapped[datetime] = mapped_column(server_default=func.now())
