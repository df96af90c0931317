"""Every domain's tables, imported so the metadata (Alembic, tests) sees them all."""

from app.auth.models import User
from app.core.idempotency_model import IdempotencyKey
from app.core.models import Base
from app.segments.models import Segment, SegmentMember

__all__ = ["Base", "IdempotencyKey", "Segment", "SegmentMember", "User"]
