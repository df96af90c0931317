"""The problem model every error response documents, and the `responses=` helper routes
use. What each route can answer (statuses, slugs, headers, operation ids) is completed
in one pass over the generated document: app/core/openapi_contract.py."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import SkipJsonSchema

from app.core.problems import PROBLEM_MEDIA_TYPE


class ProblemItem(BaseModel):
    """One entry of a problem's `errors`: `loc`/`msg` for an invalid request, `line`/
    `code`/`reason` for a rejected CSV line."""

    model_config = ConfigDict(extra="allow")

    loc: list[str | int] | SkipJsonSchema[None] = Field(default=None, max_length=32)
    msg: str | SkipJsonSchema[None] = Field(default=None, max_length=1024)
    line: int | SkipJsonSchema[None] = Field(default=None, ge=0, le=2**63 - 1)
    code: str | SkipJsonSchema[None] = Field(default=None, max_length=1024)
    reason: str | SkipJsonSchema[None] = Field(default=None, max_length=1024)


class CodeLine(BaseModel):
    """A code of an upload that another book holds, with its line."""

    model_config = ConfigDict(extra="allow")

    line: int = Field(ge=0, le=2**63 - 1)
    code: str = Field(max_length=64)


class Problem(BaseModel):
    """RFC 9457 problem details (`application/problem+json`). `type` ends with the stable
    slug (`/problems/code-locked`): branch on that, never on `title` or `detail`. Extension
    members appear only on the problems that carry them."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {
                    "type": "/problems/not-found",
                    "title": "Not Found",
                    "status": 404,
                    "detail": "No code ABC-123.",
                    "instance": "/api/v1/codes/ABC-123",
                }
            ]
        },
    )

    type: str = Field(max_length=2048, description="`<base>/<slug>`; the slug is stable.")
    title: str = Field(max_length=256)
    status: int = Field(ge=400, le=599)
    detail: str = Field(max_length=4096)
    instance: str | SkipJsonSchema[None] = Field(default=None, max_length=8192)
    errors: list[ProblemItem] | SkipJsonSchema[None] = Field(
        default=None,
        max_length=100,
        description="`validation-error`, `invalid-csv` (first 100), `idempotency-key-*`.",
    )
    codes: list[CodeLine] | SkipJsonSchema[None] = Field(
        default=None, max_length=100, description="`code-exists`: the codes another book holds."
    )
    request_id: str | SkipJsonSchema[None] = Field(
        default=None, max_length=256, description="`internal-error`: quote it when reporting."
    )


_DESCRIPTIONS = {
    400: "Malformed request.",
    401: "Missing or invalid token.",
    403: "Not allowed.",
    404: "Unknown resource, or one of another user.",
    405: "Method not allowed on this path.",
    409: "Conflict with the current state.",
    413: "Body over the limit.",
    415: "Unsupported media type.",
    422: "Invalid request.",
    429: "Rate limited.",
    500: "A bug; logged with the request id.",
    503: "Database unavailable.",
}


def problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` entries for the given statuses, all as problem+json (their slugs and
    headers are added from the contract table)."""
    return {
        status: {
            "model": Problem,
            "description": _DESCRIPTIONS.get(status, "Problem"),
            "content": {PROBLEM_MEDIA_TYPE: {}},
        }
        for status in statuses
    }


# 400 (`bad-request`): a body that is not JSON / CSV at all; every route lists it, since
# the per-route lists cannot tell routes with a body from those without.
AUTH = (400, 401, 422, 429, 503)


def without_null(schema: dict[str, Any], names: Iterable[str]) -> None:
    """Drop the `null` branch of these properties: for a partial update whose model refuses
    null there (absent means unchanged), the schema must not offer it either."""
    properties = schema.get("properties", {})
    for name in names:
        prop = properties.get(name)
        if prop is None or "anyOf" not in prop:
            continue
        rest = [branch for branch in prop["anyOf"] if branch != {"type": "null"}]
        if len(rest) == 1:
            del prop["anyOf"]
            prop.update(rest[0])
        else:
            prop["anyOf"] = rest
