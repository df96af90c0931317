"""OpenAPI links between operations: how one answer feeds the next call. Swagger UI at
`/docs` shows them under each response, and schema-driven load and fuzz tools follow them
(assign → lock, lock → redeem with the `lock_id`, a book's codes → assign from that book,
a promo listing → reserve → purchase or cancel, a notification → mark it read). Paths are
under the API prefix; targets are operationIds (app/api/contract.py); declared links name
a list's first item."""

from __future__ import annotations

from app.core.openapi_contract import Link

LINKS = (
    *(
        Link(
            name,
            ("post", "/codes/{code}/lock", "200"),
            target,
            {"code": "$response.body#/code"},
            {"lock_id": "$response.body#/lock_id"},
        )
        for name, target in (
            ("Redeem", "redeemCode"),
            ("Unlock", "unlockCode"),
            ("Validate", "validateCode"),
        )
    ),
    *(
        Link("Lock", ("post", source, "201"), "lockCode", {"code": "$response.body#/code"})
        for source in ("/codes/{code}/assign", "/books/{book_id}/assign")
    ),
    Link(
        "AssignFromTheFirstBook",
        ("get", "/me/codes", "200"),
        "assignRandomCode",
        {"book_id": "$response.body#/items/0/book_id"},
    ),
    Link(
        "AssignFromThisBook",
        ("get", "/codes/{code}", "200"),
        "assignRandomCode",
        {"book_id": "$response.body#/book_id"},
    ),
    *(
        Link(
            "AssignFromThisBook",
            ("post", source, "201"),
            "assignRandomCode",
            {"book_id": "$request.path.book_id"},
        )
        for source in ("/books/{book_id}/codes", "/books/{book_id}/codes/generate")
    ),
    Link(
        "ReserveTheNearest",
        ("get", "/me/promos", "200"),
        "reservePromo",
        {"promo_id": "$response.body#/0/id"},
    ),
    Link(
        "ReserveTheFirst",
        ("get", "/promos/running", "200"),
        "reservePromo",
        {"promo_id": "$response.body#/items/0/id"},
    ),
    *(
        Link(
            name,
            ("post", "/promos/{promo_id}/reserve", status),
            target,
            {"reservation_id": "$response.body#/id"},
        )
        for status in ("200", "201")
        for name, target in (("Purchase", "purchaseReservation"), ("Cancel", "cancelReservation"))
    ),
    Link(
        "MarkTheFirstRead",
        ("get", "/me/notifications", "200"),
        "markNotificationRead",
        {"notification_id": "$response.body#/items/0/id"},
    ),
)
