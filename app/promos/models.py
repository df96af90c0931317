"""Stores, products, flash promos, their units and reservations.

The tables are created by the hand-written migration `0003`; these mappings are for CRUD and
for the metadata. Reserve and purchase run hand-written SQL (see `reservations.py`).
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    ForeignKey,
    Identity,
    Index,
    Integer,
    SmallInteger,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.orm import Mapped, mapped_column

from app.core.models import Base, CreatedAtMixin, SealedBlockMixin
from app.promos.rules import SALES_SLOTS


def _uuid_pk() -> Mapped[uuid.UUID]:
    return mapped_column(
        UUID(as_uuid=True), primary_key=True, server_default=text("gen_random_uuid()")
    )


class Store(CreatedAtMixin, Base):
    __tablename__ = "stores"
    __table_args__ = (
        CheckConstraint("lat BETWEEN -90 AND 90 AND lng BETWEEN -180 AND 180", name="lat_lng"),
    )

    id: Mapped[uuid.UUID] = _uuid_pk()
    name: Mapped[str] = mapped_column(Text)
    lat: Mapped[float]
    lng: Mapped[float]
    address: Mapped[str | None] = mapped_column(Text)


class Product(CreatedAtMixin, Base):
    __tablename__ = "products"
    __table_args__ = (
        CheckConstraint("price_cents >= 0", name="price_cents"),
        CheckConstraint("currency ~ '^[A-Z]{3}$'", name="currency"),
    )

    id: Mapped[uuid.UUID] = _uuid_pk()
    store_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("stores.id", ondelete="RESTRICT"), index=True
    )
    name: Mapped[str] = mapped_column(Text)
    price_cents: Mapped[int] = mapped_column(Integer)
    currency: Mapped[str] = mapped_column(Text, server_default="EUR")


class Promo(CreatedAtMixin, Base):
    __tablename__ = "promos"
    __table_args__ = (
        CheckConstraint("promo_price_cents >= 0", name="promo_price_cents"),
        CheckConstraint("quantity > 0", name="quantity"),
        CheckConstraint("max_per_user > 0", name="max_per_user"),
        CheckConstraint("radius_m > 0", name="radius_m"),
        CheckConstraint("ends_at > starts_at", name="window"),
    )

    id: Mapped[uuid.UUID] = _uuid_pk()
    product_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("products.id", ondelete="RESTRICT"), index=True
    )
    title: Mapped[str] = mapped_column(Text)
    promo_price_cents: Mapped[int] = mapped_column(Integer)
    quantity: Mapped[int] = mapped_column(Integer)
    max_per_user: Mapped[int] = mapped_column(Integer, server_default="1")
    starts_at: Mapped[datetime]
    ends_at: Mapped[datetime]
    radius_m: Mapped[int] = mapped_column(Integer, server_default="2000")
    active: Mapped[bool] = mapped_column(server_default=text("true"))
    cancelled_at: Mapped[datetime | None]
    notified_at: Mapped[datetime | None]
    # Set by the worker once every unit is sold, cleared when the quantity grows: it lets
    # `ix_promos_live` leave the promo out. Never an answer: sold out is read from sales.
    sold_out: Mapped[bool] = mapped_column(server_default=text("false"))


class PromoSegment(Base):
    __tablename__ = "promo_segments"

    promo_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("promos.id", ondelete="CASCADE"), primary_key=True
    )
    segment_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("segments.id", ondelete="CASCADE"), primary_key=True, index=True
    )


class PromoSale(Base):
    """Units sold, counted in the slot `seq % SALES_SLOTS` of each unit (`rules.sales_slot`):
    purchases of one promo add to different rows instead of queueing on one. Sold out = the
    slots sum to the quantity."""

    __tablename__ = "promo_sales"
    __table_args__ = (
        CheckConstraint(f"slot BETWEEN 0 AND {SALES_SLOTS - 1}", name="slot"),
        CheckConstraint("sold > 0", name="sold"),
    )

    promo_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("promos.id", ondelete="CASCADE"), primary_key=True
    )
    slot: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    sold: Mapped[int] = mapped_column(Integer)
    last_sold_at: Mapped[datetime]


class PromoUnit(Base):
    __tablename__ = "promo_units"
    __table_args__ = (
        UniqueConstraint("promo_id", "seq"),
        CheckConstraint("state IN ('free', 'held', 'sold')", name="state"),
        CheckConstraint("(state = 'free') = (reservation_id IS NULL)", name="reservation"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    promo_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("promos.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(Text, server_default="free")
    reservation_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))


class Reservation(CreatedAtMixin, Base):
    __tablename__ = "reservations"
    __table_args__ = (
        CheckConstraint("status IN ('held', 'purchased', 'cancelled', 'expired')", name="status"),
        Index(
            "uq_reservations_promo_id_user_id_held",
            "promo_id",
            "user_id",
            unique=True,
            postgresql_where=text("status = 'held'"),
        ),
        Index(
            "uq_reservations_unit_id_purchased",
            "unit_id",
            unique=True,
            postgresql_where=text("status = 'purchased'"),
        ),
    )

    id: Mapped[uuid.UUID] = _uuid_pk()
    promo_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("promos.id", ondelete="CASCADE"))
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    unit_id: Mapped[int] = mapped_column(ForeignKey("promo_units.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(Text, server_default="held")
    expires_at: Mapped[datetime]
    updated_at: Mapped[datetime] = mapped_column(server_default=text("now()"))


class PurchaseLogEntry(Base):
    """One purchase, written by the purchase's own statement; append-only (a trigger refuses
    UPDATE, DELETE and TRUNCATE) and sealed into `purchase_blocks` (`purchase_log.py`)."""

    __tablename__ = "purchase_log"
    __table_args__ = (
        CheckConstraint("price_cents >= 0", name="price_cents"),
        CheckConstraint("currency ~ '^[A-Z]{3}$'", name="currency"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    reservation_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), unique=True)
    promo_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))
    unit_id: Mapped[int] = mapped_column(BigInteger)
    user_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))
    price_cents: Mapped[int] = mapped_column(Integer)
    currency: Mapped[str] = mapped_column(Text)
    at: Mapped[datetime] = mapped_column(server_default=text("now()"))


class PurchaseBlock(SealedBlockMixin, Base):
    """A sealed block of the purchase log's hash chain (app/core/chain.py)."""

    __tablename__ = "purchase_blocks"
