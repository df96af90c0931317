"""Shared OpenAPI fragments: problem responses every route documents."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict


class Problem(BaseModel):
    """RFC 9457 problem details (`application/problem+json`)."""

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

    type: str
    title: str
    status: int
    detail: str
    instance: str | None = None


_DESCRIPTIONS = {
    400: "Malformed request (`bad-request`).",
    401: "Missing or invalid token (`unauthenticated`).",
    403: "Wrong role or not eligible (`forbidden`, `not-eligible`).",
    404: "Unknown resource, or one of another user (`not-found`).",
    409: "Conflict with the current state; see the `type` slug.",
    413: "Body over the limit (`payload-too-large`).",
    415: "Unsupported media type (`unsupported-media-type`).",
    422: "Invalid body or query (`validation-error`).",
    429: "Rate limited (`rate-limited`); see `Retry-After`.",
    503: "Database unavailable (`unavailable`); see `Retry-After`.",
}


def problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` entries for the given statuses, all as problem+json."""
    return {
        status: {
            "model": Problem,
            "description": _DESCRIPTIONS.get(status, "Problem"),
            "content": {"application/problem+json": {}},
        }
        for status in statuses
    }


# 400 (`bad-request`): a body that is not JSON / CSV at all; every route lists it, since
# the per-route lists cannot tell routes with a body from those without.
AUTH = (400, 401, 422, 429, 503)
