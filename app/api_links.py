"""OpenAPI links between operations: how one answer feeds the next call. Swagger UI at
`/docs` shows them under each response, and schema-driven load and fuzz tools follow them
(lock → redeem with the `lock_id`, a book's codes → assign from that book, a promo listing
→ reserve). Paths are under the API prefix; declared links name a list's first item."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI


@dataclass(frozen=True)
class Link:
    name: str
    source: tuple[str, str, str]  # method, path, status
    target: tuple[str, str]  # method, path
    parameters: dict[str, str]
    body: dict[str, str] | None = None


LINKS = (
    *(
        Link(
            name,
            ("post", "/codes/{code}/lock", "200"),
            ("post", f"/codes/{{code}}/{action}"),
            {"code": "$response.body#/code"},
            {"lock_id": "$response.body#/lock_id"},
        )
        for name, action in (("Redeem", "redeem"), ("Unlock", "unlock"), ("Validate", "validate"))
    ),
    Link(
        "AssignFromTheFirstBook",
        ("get", "/me/codes", "200"),
        ("post", "/books/{book_id}/assign"),
        {"book_id": "$response.body#/items/0/book_id"},
    ),
    Link(
        "AssignFromThisBook",
        ("get", "/codes/{code}", "200"),
        ("post", "/books/{book_id}/assign"),
        {"book_id": "$response.body#/book_id"},
    ),
    *(
        Link(
            "AssignFromThisBook",
            ("post", source, "201"),
            ("post", "/books/{book_id}/assign"),
            {"book_id": "$request.path.book_id"},
        )
        for source in ("/books/{book_id}/codes", "/books/{book_id}/codes/generate")
    ),
    Link(
        "ReserveTheNearest",
        ("get", "/me/promos", "200"),
        ("post", "/promos/{promo_id}/reserve"),
        {"promo_id": "$response.body#/0/id"},
    ),
    Link(
        "ReserveTheFirst",
        ("get", "/promos/running", "200"),
        ("post", "/promos/{promo_id}/reserve"),
        {"promo_id": "$response.body#/items/0/id"},
    ),
)


def _ref(prefix: str, method: str, path: str) -> str:
    pointer = f"{prefix}{path}".replace("~", "~0").replace("/", "~1")
    return f"#/paths/{pointer}/{method}"


def install_links(app: FastAPI, prefix: str) -> None:
    """Add `LINKS` to the app's OpenAPI document when it is first generated."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        fresh = app.openapi_schema is None
        schema = generate()
        if fresh:
            for link in LINKS:
                method, path, status = link.source
                response = schema["paths"][f"{prefix}{path}"][method]["responses"][status]
                definition: dict[str, Any] = {
                    "operationRef": _ref(prefix, *link.target),
                    "parameters": link.parameters,
                }
                if link.body is not None:
                    definition["requestBody"] = link.body
                response.setdefault("links", {})[link.name] = definition
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
