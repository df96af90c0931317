"""Problem types of the books domain (slugs are part of the HTTP contract)."""

from __future__ import annotations

from app.core.problems import ProblemError


class BookExhausted(ProblemError):
    status, slug, title = 409, "book-exhausted", "Book exhausted"


class CodeUnavailable(ProblemError):
    status, slug, title = 409, "code-unavailable", "Code unavailable"


class CodeLimitReached(ProblemError):
    status, slug, title = 409, "code-limit-reached", "Code limit reached"


class CodeLocked(ProblemError):
    status, slug, title = 409, "code-locked", "Code locked"


class CodeNotAssigned(ProblemError):
    status, slug, title = 409, "code-not-assigned", "Code not assigned"


class RedemptionLimitReached(ProblemError):
    status, slug, title = 409, "redemption-limit-reached", "Redemption limit reached"


class UserRedemptionLimitReached(ProblemError):
    status, slug, title = 409, "user-redemption-limit-reached", "User redemption limit reached"


class BookInactive(ProblemError):
    status, slug, title = 409, "book-inactive", "Book inactive"


class CodeExists(ProblemError):
    """Import/generate: codes already held by another book (`codes: [{line, code}]`)."""

    status, slug, title = 409, "code-exists", "Code exists"


class NotRedeemed(ProblemError):
    status, slug, title = 409, "not-redeemed", "Not redeemed"


class InvalidCsv(ProblemError):
    """Import rejected; `errors: [{line, code, reason}]` (first 100), nothing stored."""

    status, slug, title = 422, "invalid-csv", "Invalid CSV"


class ImportFinished(ProblemError):
    """Cancel of an import job that already ended (done or failed)."""

    status, slug, title = 409, "import-finished", "Import finished"


class CodeMistyped(ProblemError):
    """The code's check character is wrong for its checksum namespace: refused unread."""

    status, slug, title = 422, "code-mistyped", "Code mistyped"
