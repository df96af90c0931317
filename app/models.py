"""Every domain's tables, imported so the metadata (Alembic, tests) sees them all."""

from app.auth.models import User
from app.books.models import Book, ChecksumPrefix, Code, Import, RedemptionHistory
from app.core.audit_model import AdminAudit
from app.core.idempotency_model import IdempotencyKey
from app.core.models import Base
from app.core.outbox_model import OutboxJob
from app.lockouts.models import Lockout
from app.notifications import models as _notifications  # noqa: F401
from app.promos.models import Product, Promo, PromoSegment, PromoUnit, Reservation, Store
from app.segments.models import Segment, SegmentMember

__all__ = [
    "AdminAudit",
    "Base",
    "Book",
    "ChecksumPrefix",
    "Code",
    "IdempotencyKey",
    "Import",
    "Lockout",
    "OutboxJob",
    "Product",
    "Promo",
    "PromoSegment",
    "PromoUnit",
    "RedemptionHistory",
    "Reservation",
    "Segment",
    "SegmentMember",
    "Store",
    "User",
]
