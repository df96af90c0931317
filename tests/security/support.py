"""Shared setup of the security tests: a code held by one user, a reservation, a
notification, and the routes of the app read from its dependency tree."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from app.api.deps import admin_user, current_user
from tests.books.flows import assign, book_with_codes
from tests.helpers import ApiUser
from tests.promos.support import create_promo, place, random_point, reserve

API = "/api/v1"


async def held_code(client: httpx.AsyncClient, admin: ApiUser, owner: ApiUser) -> dict[str, Any]:
    """A code of a fresh book, assigned to `owner`."""
    book, _ = await book_with_codes(client, admin, n=3, max_redemptions_per_code=2)
    return await assign(client, owner, str(book["id"]))


async def code_row(conn: AsyncConnection, code: str) -> dict[str, Any]:
    row = (
        (
            await conn.execute(
                text(
                    "SELECT status, user_id, redemptions, locked_until, lock_id"
                    " FROM codes WHERE code = :c"
                ),
                {"c": code},
            )
        )
        .mappings()
        .one()
    )
    return dict(row)


async def history_rows(conn: AsyncConnection, code: str) -> int:
    return int(
        (
            await conn.execute(
                text(
                    "SELECT count(*) FROM redemption_history h JOIN codes c"
                    " ON c.book_id = h.book_id AND c.id = h.code_id WHERE c.code = :c"
                ),
                {"c": code},
            )
        ).scalar_one()
    )


async def held_reservation(
    client: httpx.AsyncClient, admin: ApiUser, owner: ApiUser, **promo: Any
) -> dict[str, Any]:
    """A live hold of `owner` on a fresh running promo next to them."""
    lat, lng = random_point()
    created = await create_promo(client, admin, at=(lat, lng), **promo)
    await place(client, owner, lat, lng)
    resp = await reserve(client, owner, str(created["id"]))
    assert resp.status_code == 201, resp.text
    held: dict[str, Any] = resp.json()
    return held


async def reservation_status(conn: AsyncConnection, reservation_id: str) -> str:
    return str(
        (
            await conn.execute(
                text("SELECT status FROM reservations WHERE id = :id"), {"id": reservation_id}
            )
        ).scalar_one()
    )


async def notification_for(conn: AsyncConnection, user: ApiUser) -> int:
    """An unread notification of `user` (the promo id need not exist)."""
    return int(
        (
            await conn.execute(
                text(
                    "INSERT INTO notifications (user_id, promo_id, day)"
                    " VALUES (:u, :p, current_date) RETURNING id"
                ),
                {"u": user.id, "p": uuid.uuid4()},
            )
        ).scalar_one()
    )


# Routes -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    """One method of one route as the app serves it (prefixes and router dependencies
    applied)."""

    method: str
    path: str
    dependant: Dependant
    include_in_schema: bool

    def url(self) -> str:
        """The path with every parameter filled with a well-formed value."""
        return _PARAM.sub(lambda m: _sample(self.dependant, m.group(1)), self.path)

    def __str__(self) -> str:
        return f"{self.method} {self.path}"


_PARAM = re.compile(r"{([^}:]+)(?::[^}]*)?}")


def _sample(dependant: Dependant, name: str) -> str:
    for param in dependant.path_params:
        if param.name == name:
            annotation = param.field_info.annotation
            if annotation is int:
                return "1"
            if annotation is uuid.UUID:
                return str(uuid.uuid4())
    return "NOPE-0000"


def _needs(dependant: Dependant, target: object) -> bool:
    return any(d.call is target or _needs(d, target) for d in dependant.dependencies)


def _flatten(routes: Iterable[Any]) -> Iterator[Any]:
    """Route objects with a dependant, whether the app keeps included routers nested
    (newer FastAPI: effective route contexts) or flat (`APIRoute`)."""
    for route in routes:
        contexts = getattr(route, "effective_route_contexts", None)
        if contexts is not None:
            yield from _flatten(contexts())
        elif getattr(route, "dependant", None) is not None:
            yield route


def api_endpoints(app: FastAPI) -> Iterator[Endpoint]:
    for route in _flatten(app.routes):
        path = getattr(route, "path_format", None) or route.path
        if not path.startswith(API):
            continue
        for method in sorted(set(route.methods or ()) - {"HEAD"}):
            yield Endpoint(method, path, route.dependant, bool(route.include_in_schema))


def admin_endpoints(app: FastAPI) -> list[Endpoint]:
    """Every /api/v1 route whose dependencies include the admin guard."""
    return [e for e in api_endpoints(app) if _needs(e.dependant, admin_user)]


def authenticated_endpoints(app: FastAPI) -> list[Endpoint]:
    return [e for e in api_endpoints(app) if _needs(e.dependant, current_user)]
