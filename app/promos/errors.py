"""Problem types of the promos domain (slugs as listed in API.md)."""

from __future__ import annotations

from app.core.problems import ProblemError


class SoldOut(ProblemError):
    status, slug, title = 409, "sold-out", "Sold out"


class PromoNotRunning(ProblemError):
    status, slug, title = 409, "promo-not-running", "Promo not running"


class PurchaseLimitReached(ProblemError):
    status, slug, title = 409, "purchase-limit-reached", "Purchase limit reached"


class ReservationExpired(ProblemError):
    status, slug, title = 409, "reservation-expired", "Reservation expired"


class NotEligible(ProblemError):
    status, slug, title = 403, "not-eligible", "Not eligible"


class InUse(ProblemError):
    """Deleting something other rows still point at (a store with products, …)."""

    status, slug, title = 409, "conflict", "Still in use"
