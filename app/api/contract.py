"""The OpenAPI contract table: every operation's stable `operationId` and the domain
problem slugs it can answer, by status (the statuses and slugs every route shares are
added by app/core/openapi_contract.py). The ids are part of the contract: generated
clients name their functions after them, so renaming one breaks every app team's build.
"""

from __future__ import annotations

from app.api.deps import idempotency, transaction, upload_idempotency
from app.api_links import LINKS
from app.core.openapi_contract import Contract, Operation

_INACTIVE = "book-inactive"
_REDEEM = (
    "code-locked",
    "code-not-assigned",
    "redemption-limit-reached",
    "user-redemption-limit-reached",
    _INACTIVE,
)
_IN_USE = {409: ("conflict",)}  # a row still referenced (a store's products, a promo's holds)
# Lookups of a code: a mistyped check character, and the guessing lockout.
_GUESSES = {422: ("code-mistyped",), 429: ("too-many-failures",)}

OPERATIONS = {
    # codes (the hot paths)
    "GET /codes/{code}": Operation("getCode"),
    "POST /codes/{code}/assign": Operation(
        "assignCode",
        {409: ("code-unavailable", "code-limit-reached", _INACTIVE), **_GUESSES},
    ),
    "POST /codes/{code}/lock": Operation("lockCode", {409: _REDEEM, **_GUESSES}),
    "POST /codes/{code}/unlock": Operation("unlockCode", {409: ("code-locked",), **_GUESSES}),
    "POST /codes/{code}/redeem": Operation("redeemCode", {409: _REDEEM, **_GUESSES}),
    "POST /codes/{code}/validate": Operation("validateCode", _GUESSES),
    "POST /codes/{code}/rollback": Operation("rollbackRedemption", {409: ("not-redeemed",)}),
    "POST /books/{book_id}/assign": Operation(
        "assignRandomCode", {409: ("book-exhausted", "code-limit-reached", _INACTIVE)}
    ),
    "GET /me/codes": Operation("listMyCodes"),
    "GET /me/books": Operation("listMyBooks"),
    "GET /history": Operation("listHistory"),
    "GET /me/history": Operation("listMyHistory"),
    # books
    "POST /books": Operation("createBook"),
    "GET /books": Operation("listBooks"),
    "GET /books/{book_id}": Operation("getBook"),
    "PATCH /books/{book_id}": Operation("updateBook"),
    "POST /books/{book_id}/codes": Operation(
        "importCodes", {409: ("code-exists",), 422: ("invalid-csv",)}
    ),
    "POST /books/{book_id}/codes/generate": Operation("generateCodes"),
    "GET /books/{book_id}/codes": Operation("listBookCodes"),
    "GET /books/{book_id}/codes.csv": Operation("exportCodes"),
    "POST /books/{book_id}/distribute": Operation("distributeCodes", {409: (_INACTIVE,)}),
    "POST /books/{book_id}/distribute/preview": Operation(
        "previewDistribution", {409: (_INACTIVE,)}
    ),
    "GET /books/{book_id}/report": Operation("getBookReport"),
    # import jobs
    "POST /books/{book_id}/imports": Operation("startImport"),
    "GET /books/{book_id}/imports": Operation("listImports"),
    "GET /imports/{import_id}": Operation("getImport"),
    "GET /imports/{import_id}/errors.csv": Operation("exportImportErrors"),
    "DELETE /imports/{import_id}": Operation("cancelImport", {409: ("import-finished",)}),
    # promos, their catalogue and reservations
    "POST /promos/{promo_id}/reserve": Operation(
        "reservePromo",
        {
            403: ("not-eligible",),
            409: ("sold-out", "promo-not-running", "purchase-limit-reached"),
        },
    ),
    "POST /reservations/{reservation_id}/purchase": Operation(
        "purchaseReservation", {409: ("reservation-expired", "promo-not-running")}
    ),
    "POST /reservations/{reservation_id}/cancel": Operation(
        "cancelReservation", {409: ("reservation-expired",)}
    ),
    "GET /reservations/{reservation_id}": Operation("getReservation"),
    "GET /me/reservations": Operation("listMyReservations"),
    "GET /promos/running": Operation("listRunningPromos"),
    "GET /me/promos": Operation("listMyPromos"),
    "POST /promos": Operation("createPromo"),
    "GET /promos": Operation("listPromos"),
    "GET /promos/{promo_id}": Operation("getPromo"),
    "GET /promos/{promo_id}/report": Operation("getPromoReport"),
    "PATCH /promos/{promo_id}": Operation("updatePromo", _IN_USE),
    "DELETE /promos/{promo_id}": Operation("deletePromo", _IN_USE),
    "POST /promos/{promo_id}/cancel": Operation("cancelPromo"),
    "GET /promos/{promo_id}/stats": Operation("getPromoStats"),
    "POST /stores": Operation("createStore"),
    "GET /stores": Operation("listStores"),
    "GET /stores/{store_id}": Operation("getStore"),
    "PATCH /stores/{store_id}": Operation("updateStore"),
    "DELETE /stores/{store_id}": Operation("deleteStore", _IN_USE),
    "POST /products": Operation("createProduct"),
    "GET /products": Operation("listProducts"),
    "GET /products/{product_id}": Operation("getProduct"),
    "PATCH /products/{product_id}": Operation("updateProduct"),
    "DELETE /products/{product_id}": Operation("deleteProduct", _IN_USE),
    # accounts
    "POST /auth/register": Operation("registerUser", {409: ("email-taken",)}),
    "POST /auth/token": Operation("issueToken", {429: ("too-many-failures",)}),
    "POST /auth/refresh": Operation("refreshToken"),
    "POST /auth/logout": Operation("logout"),
    "GET /auth/me": Operation("getMe"),
    "PUT /me/location": Operation("setMyLocation"),
    "PUT /me/profile": Operation("setMyProfile"),
    "GET /users": Operation("listUsers"),
    "GET /users/{user_id}": Operation("getUser"),
    "PATCH /users/{user_id}": Operation("updateUser"),
    "DELETE /users/{user_id}": Operation("eraseUser"),
    # trust
    "DELETE /me": Operation("eraseMe"),
    "GET /me/export": Operation("exportMyData"),
    "GET /lockouts": Operation("listLockouts"),
    "DELETE /lockouts/{key}": Operation("clearLockout"),
    "GET /audit": Operation("listAudit"),
    "GET /audit/verify": Operation("verifyAuditChain"),
    # segments
    "POST /segments": Operation("createSegment"),
    "GET /segments": Operation("listSegments"),
    "GET /segments/{segment_id}": Operation("getSegment"),
    "PATCH /segments/{segment_id}": Operation("updateSegment"),
    "DELETE /segments/{segment_id}": Operation("deleteSegment"),
    "POST /segments/{segment_id}/members": Operation("addSegmentMembers"),
    "GET /segments/{segment_id}/members": Operation("listSegmentMembers"),
    "DELETE /segments/{segment_id}/members/{user_id}": Operation("removeSegmentMember"),
    # notifications
    "GET /me/notifications": Operation("listMyNotifications"),
    "POST /me/notifications/{notification_id}/read": Operation("markNotificationRead"),
    "GET /me/notifications/stream": Operation("streamMyNotifications"),
    "GET /notifications/dead-letters": Operation("listDeadLetters"),
    "POST /notifications/dead-letters/{job_id}/retry": Operation(
        "retryDeadLetter", {409: ("conflict",)}
    ),
    # operations (outside the API prefix)
    "GET /healthz": Operation("checkLiveness"),
    "GET /readyz": Operation("checkReadiness"),
    "GET /metrics": Operation("getMetrics"),
}

TAGS = (
    ("auth", "Accounts and tokens."),
    ("me", "The caller's own codes, promos, reservations and profile."),
    ("users", "Accounts (admin)."),
    ("books", "Coupon books and their codes (admin)."),
    ("imports", "Large code imports and generations run as background jobs (admin)."),
    ("codes", "Assign, lock, unlock, redeem, validate and roll back codes."),
    ("history", "The append-only audit of code transitions."),
    ("segments", "Audiences for promos and distribution (admin)."),
    ("stores", "Stores promos are sold in (admin)."),
    ("products", "Products promos sell (admin)."),
    ("promos", "Flash promos with limited units."),
    ("reservations", "Holds on promo units, then purchase or cancel."),
    ("notifications", "Promo notifications, listed and streamed."),
    ("lockouts", "Callers locked out after too many failed lookups (admin)."),
    ("audit", "Admin changes and the sealed history chain (admin)."),
    ("privacy", "Erasure and export of a person's data."),
    ("operations", "Liveness, readiness and metrics."),
)


def contract(prefix: str) -> Contract:
    return Contract(
        prefix=prefix,
        operations=OPERATIONS,
        tags=TAGS,
        links=LINKS,
        idempotency_dependencies=frozenset({idempotency, upload_idempotency, transaction}),
    )
