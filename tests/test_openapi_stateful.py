"""Stateful property-based contract test. schemathesis chains operations through the links it
infers from the OpenAPI (response fields feeding later path parameters and bodies) and from the
`Location` headers of 201s, against a real server on a private database seeded with books,
codes, a running promo and a reservation; once as an admin, once as a user. Fails on any 5xx,
any undocumented status or content type, and any response its schema does not describe."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from app.core.security import Role
from app.core.settings import Settings
from app.main import create_app
from tests.helpers import ApiUser
from tests.live_server import LiveServer
from tests.openapi_stateful import (
    ADMIN_SCOPES,
    USER_SCOPES,
    Locations,
    RunReport,
    Scope,
    make_user,
    private_database,
    run_stateful,
    seed,
)


@dataclass
class World:
    live: LiveServer
    admin: ApiUser
    user: ApiUser
    locations: Locations


@pytest.fixture
def world(settings: Settings) -> Iterator[World]:
    """A server on its own freshly seeded database: each role's run starts from the same
    state whatever ran before it."""
    with private_database(settings) as private, LiveServer(private) as live:
        admin = make_user(live, private, Role.admin)
        user = make_user(live, private, Role.user)
        others = [make_user(live, private, Role.user) for _ in range(2)]
        yield World(live, admin, user, seed(live.url, admin, user, others))


def _check(world: World, caller: ApiUser, scopes: tuple[Scope, ...]) -> None:
    reports: list[RunReport] = []
    for scope in scopes:
        report = run_stateful(world.live.url, caller, world.locations, scope)
        print(report.summary())
        reports.append(report)
    failures = [failure for report in reports for failure in report.failures]
    assert not failures, "\n\n".join(failures)
    for scope, report in zip(scopes, reports, strict=True):
        assert len(report.deepest_ok) >= scope.min_ok_chain, report.summary()


def test_every_route_with_a_body_documents_400(settings: Settings) -> None:
    """A body that is not JSON (or CSV, or a form) at all is a 400 `bad-request`; the stateful
    run's negative cases send such bodies, and a 400 nobody documented fails them."""
    spec = create_app(settings).openapi()
    with_body = {
        f"{method.upper()} {path}": operation["responses"]
        for path, item in spec["paths"].items()
        for method, operation in item.items()
        if "requestBody" in operation
    }
    assert len(with_body) > 20
    assert [name for name, responses in with_body.items() if "400" not in responses] == []


def test_admin_chains_honour_the_schema(world: World) -> None:
    _check(world, world.admin, ADMIN_SCOPES)


def test_user_chains_honour_the_schema(world: World) -> None:
    _check(world, world.user, USER_SCOPES)
