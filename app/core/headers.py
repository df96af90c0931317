"""Request headers read straight from the ASGI scope, for the few every request needs:
Starlette's `Headers` decodes and compares every header in Python on each lookup."""

from __future__ import annotations

from starlette.requests import HTTPConnection


def header(request: HTTPConnection, name: bytes) -> str | None:
    """The first value of header `name` (lower case, as ASGI gives names), or None."""
    headers: list[tuple[bytes, bytes]] = request.scope["headers"]
    for key, value in headers:
        if key == name:
            return value.decode("latin-1")
    return None
