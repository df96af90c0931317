"""Stateful OpenAPI runs: a private database seeded through the API, the served schema with
links inferred by schemathesis (response fields and `Location` headers), and its state
machine driven for one role while every step, status and chain depth is counted."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import hypothesis
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from hypothesis.errors import FlakyStrategyDefinition
from schemathesis import checks as st_checks
from schemathesis.config import SchemathesisConfig
from schemathesis.core.failures import FailureGroup
from schemathesis.engine.observations import LocationHeaderEntry
from schemathesis.generation.stateful.state_machine import normalize_name

from app.core.db import libpq_url
from app.core.migrations import upgrade_to_head
from app.core.security import Role
from app.core.settings import Settings
from tests.helpers import ApiUser
from tests.live_server import LiveServer

API = "/api/v1"
SEEDS = 10
CHECKS = [
    st_checks.not_a_server_error,
    st_checks.status_code_conformance,
    st_checks.content_type_conformance,
    st_checks.response_schema_conformance,
]


# --- what the fuzzers leave out ----------------------------------------------------------------


def without_event_streams(schema: Any) -> Any:
    """The schema less the operations that answer `text/event-stream`: an event stream never
    ends, so a fuzzer would wait on it until its timeout. They stay documented; the stream
    has its own tests (tests/notifications/test_stream.py)."""
    streams = {
        f"{method.upper()} {path}"
        for path, item in schema.raw_schema["paths"].items()
        for method, operation in item.items()
        if isinstance(operation, dict)
        and any(
            "text/event-stream" in response.get("content", {})
            for response in operation.get("responses", {}).values()
        )
    }
    return schema.exclude(func=lambda ctx: ctx.operation.label in streams)


# --- a private database, so list endpoints show this run's data and nothing else -----------


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))


def _execute(url: str, sql: str, *args: object) -> Any:
    async def run() -> Any:
        conn = await asyncpg.connect(url, statement_cache_size=0)
        try:
            return await conn.fetchval(sql, *args)
        finally:
            await conn.close()

    return asyncio.run(run())


@contextmanager
def private_database(settings: Settings) -> Iterator[Settings]:
    """The test settings pointed at a fresh, migrated database that is dropped afterwards."""
    assert settings.database_url
    server_url = libpq_url(settings.database_url)
    name = f"cf_stateful_{uuid.uuid4().hex[:8]}"
    _execute(server_url, f'CREATE DATABASE "{name}"')
    try:
        url = _with_database(server_url, name)
        upgrade_to_head(url)
        direct = settings.database_direct_url
        yield settings.model_copy(
            update={
                "database_url": url,
                "database_direct_url": _with_database(libpq_url(direct), name) if direct else None,
            }
        )
    finally:
        _execute(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def make_user(live: LiveServer, settings: Settings, role: Role) -> ApiUser:
    """A committed user with a token issued by the live server."""
    assert settings.database_url
    email = f"stateful-{uuid.uuid4().hex[:10]}@example.com"
    user_id: uuid.UUID = _execute(
        settings.database_url,
        "INSERT INTO users (email, role) VALUES ($1, $2) RETURNING id",
        email,
        role.value,
    )
    return ApiUser(user_id, email, role, live.tokens.issue(user_id, role))


# --- seeding through the API ------------------------------------------------------------------


# (operation label, Location header) of every 201 the seeding got
Locations = list[tuple[str, str]]


@dataclass
class Seeder:
    """Creates resources through the API and keeps the `Location` headers the 201s carried."""

    client: httpx.Client
    locations: Locations

    def post(self, route: str, path: str, **kwargs: Any) -> dict[str, Any]:
        response = self.client.post(f"{API}{path}", **kwargs)
        assert response.status_code in (200, 201), (path, response.status_code, response.text)
        if response.status_code == 201 and "location" in response.headers:
            self.locations.append((f"POST {API}{route}", response.headers["location"]))
        body: dict[str, Any] = response.json()
        return body

    def book_with_codes(self, count: int, **book: Any) -> str:
        created = self.post(
            "/books", "/books", json={"name": f"Stateful {uuid.uuid4().hex[:6]}", **book}
        )
        book_id = str(created["id"])
        prefix = f"SF{uuid.uuid4().hex[:8].upper()}"
        csv = "code\r\n" + "".join(f"{prefix}-{n:05d}\r\n" for n in range(count))
        self.post(
            "/books/{book_id}/codes",
            f"/books/{book_id}/codes",
            content=csv.encode(),
            headers={"Content-Type": "text/csv"},
        )
        return book_id

    def assign(self, book_id: str, user: ApiUser) -> str:
        code = self.post(
            "/books/{book_id}/assign", f"/books/{book_id}/assign", json={"user_id": str(user.id)}
        )
        return str(code["code"])

    def running_promo(self, lat: float, lng: float) -> str:
        store = self.post(
            "/stores", "/stores", json={"name": "Stateful store", "lat": lat, "lng": lng}
        )
        product = self.post(
            "/products",
            "/products",
            json={"store_id": store["id"], "name": "Stateful product", "price_cents": 1999},
        )
        now = datetime.now(UTC)
        promo = self.post(
            "/promos",
            "/promos",
            json={
                "product_id": product["id"],
                "title": "Stateful promo",
                "promo_price_cents": 999,
                "quantity": 500,
                "max_per_user": 500,
                "radius_m": 50_000,
                "starts_at": (now - timedelta(minutes=5)).isoformat(),
                "ends_at": (now + timedelta(days=1)).isoformat(),
            },
        )
        return str(promo["id"])


STORE = (52.5200, 13.4050)


def seed(base_url: str, admin: ApiUser, user: ApiUser, others: list[ApiUser]) -> Locations:
    """Books with codes (some already held by the admin and by the user), a store, product
    and running promo near the user, a segment with members, and the user's live reservation.
    Returns the `Location` headers the 201s carried."""
    locations: Locations = []
    with httpx.Client(base_url=base_url, headers=admin.headers, timeout=30) as client:
        seeder = Seeder(client, locations)
        # Short locks, so that codes locked in one scenario are free again in the next ones
        for max_redemptions in (50, 1):
            book_id = seeder.book_with_codes(
                150,
                max_codes_per_user=None,
                max_redemptions_per_code=max_redemptions,
                lock_ttl_seconds=2,
            )
            for _ in range(2):
                seeder.assign(book_id, admin)
            seeder.assign(book_id, user)
        generated = seeder.post(
            "/books", "/books", json={"name": "Stateful generated", "max_codes_per_user": 3}
        )
        seeder.post(
            "/books/{book_id}/codes/generate",
            f"/books/{generated['id']}/codes/generate",
            json={"count": 50, "pattern": "GEN-####-????"},
        )
        seeder.assign(str(generated["id"]), user)
        promo_id = seeder.running_promo(*STORE)
        segment = seeder.post(
            "/segments", "/segments", json={"name": "Stateful segment", "kind": "static"}
        )
        seeder.post(
            "/segments/{segment_id}/members",
            f"/segments/{segment['id']}/members",
            json={"user_ids": [str(u.id) for u in [user, *others]]},
        )
    with httpx.Client(base_url=base_url, headers=user.headers, timeout=30) as client:
        response = client.put(f"{API}/me/location", json={"lat": STORE[0], "lng": STORE[1] + 0.01})
        assert response.status_code == 200, response.text
        Seeder(client, locations).post("/promos/{promo_id}/reserve", f"/promos/{promo_id}/reserve")
    return locations


# --- the state machine --------------------------------------------------------------------------


class BudgetSpent(Exception):
    """Raised when a scenario would start after the run's step budget is spent."""


@dataclass(frozen=True)
class Scope:
    """One state machine: a role's operations (paths under /api/v1) and its budget."""

    name: str
    paths: tuple[str, ...]
    steps: int  # per scenario
    budget: int  # steps in all; the scenario that reaches it is the last
    seed: int
    # The run must have built a chain of at least this many successful (2xx) steps, each fed
    # by the previous one's response: a run that stops reaching into the data checks little.
    min_ok_chain: int


# The app declares the links inference misses or gets wrong (`app/api_links.py`): `lock_id`
# is taken from the lock request instead of its response; a user sees no operation producing
# books, so nothing feeds `book_id` into assign; `/me/promos` answers a bare array; uploads
# and generation answer counts, the book id being only in their path.

# Generating a million codes is the benchmark's business, not a contract question.
MAX_GENERATED = 100
# The upload's grammar (one code per line, optional `code` header), so that generated uploads
# are mostly accepted and the new codes can be assigned, locked and redeemed.
CSV_PATTERN = r"^(code\r?\n)?([A-Za-z0-9_-]{1,64}\r?\n){1,20}$"


def _narrow(raw: dict[str, Any]) -> None:
    """Narrow the schema to what the contract run should generate."""
    paths = raw["paths"]
    upload = paths[f"{API}/books/{{book_id}}/codes"]["post"]["requestBody"]["content"]
    upload["text/csv"]["schema"]["pattern"] = CSV_PATTERN
    raw["components"]["schemas"]["GenerateIn"]["properties"]["count"]["maximum"] = MAX_GENERATED


def _prefer_declared(raw: dict[str, Any]) -> None:
    """Drop inferred links that duplicate a declared link's source, status and target."""
    for item in raw["paths"].values():
        for operation in item.values():
            for response in operation.get("responses", {}).values():
                links = response.get("links", {})
                declared = {
                    link.get("operationId") or link.get("operationRef")
                    for link in links.values()
                    if not link.get("x-schemathesis", {}).get("is_inferred")
                }
                for name in [
                    name
                    for name, link in links.items()
                    if link.get("x-schemathesis", {}).get("is_inferred")
                    and (link.get("operationId") or link.get("operationRef")) in declared
                ]:
                    del links[name]


@dataclass
class RunReport:
    """What one state machine run did: steps, statuses, chains and check failures."""

    name: str
    links: Counter[str] = field(default_factory=Counter)  # by where they came from
    steps: int = 0
    scenarios: int = 0
    restarts: int = 0
    seconds: float = 0.0
    operations: Counter[str] = field(default_factory=Counter)
    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)
    seconds_by_operation: Counter[str] = field(default_factory=Counter)
    depths: Counter[int] = field(default_factory=Counter)
    links_followed: set[str] = field(default_factory=set)
    deepest: list[str] = field(default_factory=list)
    deepest_ok: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    _chains: dict[str, list[str]] = field(default_factory=dict, repr=False)
    _ok_chains: dict[str, list[str]] = field(default_factory=dict, repr=False)

    def record(self, input: Any, output: Any, seconds: float) -> None:
        """Count a step; its chain is its parent's (the step whose response fed it) plus it."""
        label = output.case.operation.label
        status = output.response.status_code
        step = f"{label} {status}"
        parent = ""
        if input.transition is not None:
            parent = input.transition.parent_id
            if input.is_applied:
                self.links_followed.add(input.transition.id)
        chain = [*self._chains.get(parent, []), step]
        self._chains[output.case.id] = chain
        if 200 <= status < 300:
            ok_chain = [*self._ok_chains.get(parent, []), step]
            self._ok_chains[output.case.id] = ok_chain
            self.deepest_ok = max(self.deepest_ok, ok_chain, key=len)
        self.steps += 1
        self.operations[label] += 1
        self.statuses[(label, status)] += 1
        self.seconds_by_operation[label] += seconds
        self.depths[len(chain)] += 1
        self.deepest = max(self.deepest, chain, key=len)

    def summary(self) -> str:
        lines = [
            f"{self.name}: {self.steps} steps in {self.scenarios} scenarios"
            f" ({self.restarts} restarts) over {len(self.operations)} operations,"
            f" {self.seconds:.1f} s",
            f"  links: {self.links.total()} ("
            + ", ".join(f"{n} {origin}" for origin, n in sorted(self.links.items()))
            + f"), {len(self.links_followed)} followed",
            "  slowest: "
            + ", ".join(f"{op} {t:.1f} s" for op, t in self.seconds_by_operation.most_common(3)),
            f"  steps by chain depth: {dict(sorted(self.depths.items()))}",
            f"  deepest chain: {' -> '.join(self.deepest)}",
            f"  deepest chain of successes: {' -> '.join(self.deepest_ok)}",
        ]
        lines += [
            f"  {n:4d} x {status} {label}" for (label, status), n in sorted(self.statuses.items())
        ]
        return "\n".join(lines)


def _describe(case: Any, response: Any, exc: FailureGroup) -> str:
    request = response.request
    body = request.body
    if isinstance(body, bytes):
        body = body[:300].decode(errors="replace")
    problems = "; ".join(f"{failure.title}: {failure.message}" for failure in exc.exceptions)
    return (
        f"{case.operation.label} -> {problems}\n"
        f"  request: {request.method} {request.url} body={body!r}\n"
        f"  response: {response.status_code} {response.content[:300]!r}"
    )


def _rooted_at_collections(schema: Any, machine: type[Any]) -> type[Any]:
    """Start chains only at operations without path parameters (lists and creations): an
    operation on one resource is reached through a link from where that resource came from.
    schemathesis also starts chains at every POST, which here means `/codes/{random}/lock`
    and the like, two of each per scenario, all answering 404."""
    masked: dict[str, None] = {}
    roots = set(machine._root_labels)
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.path_parameters and operation.label in roots:
            name = normalize_name(f"RANDOM -> {operation.label}")
            assert name in machine.root_rules, (name, sorted(machine.root_rules))
            masked[name] = None
            roots.discard(operation.label)
    namespace: dict[str, Any] = {
        **masked,
        "root_rules": machine.root_rules - masked.keys(),
        "_root_labels": frozenset(roots),
    }
    return type("CollectionRootedWorkflow", (machine,), namespace)


def run_stateful(base_url: str, user: ApiUser, locations: Locations, scope: Scope) -> RunReport:
    """Drive schemathesis' state machine over `scope` as `user`; check failures are
    collected (one per operation, status and failure kind), not raised."""
    started = time.monotonic()
    raw = httpx.get(f"{base_url}/openapi.json", timeout=30).json()
    _narrow(raw)
    wanted = {f"{API}{path}" for path in scope.paths}
    schema = without_event_streams(
        schemathesis.openapi.from_dict(raw, config=SchemathesisConfig())
    ).include(lambda ctx: ctx.operation.path in wanted)
    schema.config.update(base_url=base_url, headers=dict(user.headers), request_timeout=30)
    # Links from response fields first, then from the Location headers the seeding saw
    schema.analysis.inject_links()
    _prefer_declared(raw)
    for label, location in locations:
        operation = schema.find_operation_by_label(label)
        if operation is not None:
            schema.analysis.inferencer.inject_links(
                operation, [LocationHeaderEntry(status_code=201, value=location)]
            )
    base = _rooted_at_collections(schema, schema.as_state_machine())
    report = RunReport(name=scope.name)
    for transitions in base._transitions.operations.values():
        for link in transitions.outgoing:
            if not link.is_inferred:
                report.links["declared"] += 1
            elif link.name.startswith("X-Inferred-Link"):
                report.links["from Location headers"] += 1
            else:
                report.links["from response fields"] += 1
    seen: set[tuple[object, ...]] = set()

    class Machine(base):  # type: ignore[misc, valid-type]
        def setup(self) -> None:
            if report.steps >= scope.budget:
                raise BudgetSpent
            report.scenarios += 1

        def step(self, input: Any) -> Any:
            step_started = time.monotonic()
            output = super().step(input)
            report.record(input, output, time.monotonic() - step_started)
            return output

        def validate_response(
            self, response: Any, case: Any, additional_checks: Any = None, **kwargs: Any
        ) -> None:
            try:
                case.validate_response(
                    response,
                    checks=CHECKS,
                    transport_kwargs=kwargs or None,
                    recorder=self.recorder,
                )
            except FailureGroup as exc:
                key = (
                    case.operation.label,
                    response.status_code,
                    *(f.title for f in exc.exceptions),
                )
                if key not in seen:
                    seen.add(key)
                    report.failures.append(_describe(case, response, exc))

    # Scenarios run until the step budget is spent. A scenario's draws depend on what the
    # server answered earlier, so Hypothesis may see two scenarios with one prefix drawing
    # differently and stop ("inconsistent data generation"); the run then goes on with the
    # next seed.
    for seed in range(SEEDS):
        try:
            hypothesis.seed(scope.seed + seed)(Machine).run(
                settings=settings(
                    max_examples=10_000,
                    stateful_step_count=scope.steps,
                    deadline=None,
                    database=None,
                    phases=[Phase.generate],
                    suppress_health_check=list(HealthCheck),
                )
            )
        except BudgetSpent:
            break
        except FlakyStrategyDefinition:
            report.restarts += 1
    report.seconds = time.monotonic() - started
    assert report.steps >= scope.budget, f"{scope.name}: the budget was not spent"
    return report


CODE_PATHS = (
    "/codes/{code}",
    "/codes/{code}/lock",
    "/codes/{code}/unlock",
    "/codes/{code}/redeem",
    "/codes/{code}/validate",
)

# Sinks (history, CSV export) are left to the stateless test: every response with a book id
# links to them, and here they would only thin out the chains.
ADMIN_SCOPES = (
    Scope(
        name="admin coupons",
        paths=(
            "/me/codes",
            "/books",
            "/books/{book_id}",
            "/books/{book_id}/codes",
            "/books/{book_id}/codes/generate",
            "/books/{book_id}/assign",
            "/books/{book_id}/distribute",
            "/codes/{code}/assign",
            "/codes/{code}/rollback",
            *CODE_PATHS,
        ),
        steps=35,
        budget=400,
        seed=1000,
        min_ok_chain=4,
    ),
    Scope(
        name="admin catalog",
        paths=(
            "/stores",
            "/stores/{store_id}",
            "/products",
            "/products/{product_id}",
            "/promos",
            "/promos/{promo_id}",
            "/promos/{promo_id}/cancel",
            "/promos/{promo_id}/stats",
            "/segments",
            "/segments/{segment_id}",
            "/segments/{segment_id}/members",
            "/segments/{segment_id}/members/{user_id}",
            "/users",
            "/users/{user_id}",
        ),
        steps=35,
        budget=200,
        seed=2000,
        min_ok_chain=3,
    ),
)

USER_SCOPES = (
    Scope(
        name="user",
        paths=(
            "/auth/me",
            "/me/codes",
            "/me/promos",
            "/me/reservations",
            "/books/{book_id}/assign",
            "/promos/running",
            "/promos/{promo_id}/reserve",
            "/reservations/{reservation_id}",
            "/reservations/{reservation_id}/purchase",
            "/reservations/{reservation_id}/cancel",
            *CODE_PATHS,
        ),
        steps=35,
        budget=450,
        seed=3000,
        min_ok_chain=4,
    ),
)
