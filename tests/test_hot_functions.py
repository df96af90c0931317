"""Reserve and random assign are one round trip each: one call of a plpgsql function
(`promo_reserve`, `book_assign_random`) that takes the caller's locks and claims in statements
of its own. Without an `Idempotency-Key` the call is its own transaction (no BEGIN, no
COMMIT); with a key it runs inside the transaction that stores the key's record. The
functions in the schema are the ones the code writes."""

from __future__ import annotations

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from app.books.assign import ASSIGN_BATCH_FUNCTION_BODY, ASSIGN_FUNCTION_BODY
from app.core.security import Role
from app.promos.reservations import (
    RESERVE_BATCH_FUNCTION_BODY,
    RESERVE_FUNCTION_BODY,
    RESERVE_SETTINGS,
)
from tests.books.flows import book_with_codes
from tests.conftest import MakeUser
from tests.promos.support import create_promo, placed_users, random_point

BODIES = {
    "promo_reserve": RESERVE_FUNCTION_BODY,
    "promo_reserve_batch": RESERVE_BATCH_FUNCTION_BODY,
    "book_assign_random": ASSIGN_FUNCTION_BODY,
    "book_assign_random_batch": ASSIGN_BATCH_FUNCTION_BODY,
}
# The settings each function runs with (`CREATE FUNCTION … SET`), as `pg_proc.proconfig`.
SETTINGS = {
    "promo_reserve": RESERVE_SETTINGS,
    "promo_reserve_batch": RESERVE_SETTINGS,
    "book_assign_random": {},
    "book_assign_random_batch": {},
}


@pytest.mark.parametrize("name", sorted(BODIES))
async def test_the_schema_holds_the_function_the_code_writes(
    pg: asyncpg.Connection, name: str
) -> None:
    row = await pg.fetchrow("SELECT prosrc, proconfig FROM pg_proc WHERE proname = $1", name)
    assert row["prosrc"] == BODIES[name], (
        f"{name} in the schema differs from the code's: write a migration that replaces it"
    )
    settings = dict(item.split("=", 1) for item in row["proconfig"] or [])
    assert settings == SETTINGS[name], (
        f"{name} in the schema runs with {settings}, the code's with {SETTINGS[name]}:"
        " write a migration that replaces it"
    )


@pytest.fixture
async def hot_path(
    request: pytest.FixtureRequest,
    app: FastAPI,
    live_client: httpx.AsyncClient,
    make_live_user: MakeUser,
) -> tuple[str, str, dict[str, str], int]:
    """A reserve of a running promo or a random assign of a filled book, for a new user:
    the function it calls, its path, the user's headers and the status of a second call
    (the caller's live hold again; the book's limit of one code a user)."""
    admin = await make_live_user(Role.admin)
    lat, lng = random_point()
    [user] = await placed_users(app, 1, lat, lng)
    # Coalesced, a lone request is a batch of one: the batch function, called once.
    coalesced = app.state.settings.coalesce_hot_paths
    if request.param == "reserve":
        promo = await create_promo(live_client, admin, at=(lat, lng), quantity=5)
        function = "promo_reserve_batch" if coalesced else "promo_reserve"
        return function, f"/api/v1/promos/{promo['id']}/reserve", user.headers, 200
    book, _ = await book_with_codes(live_client, admin, 5, max_codes_per_user=1)
    function = "book_assign_random_batch" if coalesced else "book_assign_random"
    return function, f"/api/v1/books/{book['id']}/assign", user.headers, 409


PATHS = pytest.mark.parametrize("hot_path", ["reserve", "assign"], indirect=True)


@PATHS
async def test_without_a_key_the_call_is_the_whole_transaction(
    live_client: httpx.AsyncClient,
    hot_path: tuple[str, str, dict[str, str], int],
    statements: list[str],
) -> None:
    function, path, headers, second = hot_path
    statements.clear()
    answer = await live_client.post(path, headers=headers)
    assert answer.status_code == 201, answer.text
    assert len(statements) == 1 and f"FROM {function}(" in statements[0], statements
    again = await live_client.post(path, headers=headers)
    assert again.status_code == second, again.text  # the first call committed


@PATHS
async def test_with_a_key_the_call_commits_with_the_keys_record(
    live_client: httpx.AsyncClient,
    hot_path: tuple[str, str, dict[str, str], int],
    statements: list[str],
) -> None:
    function, path, headers, _ = hot_path
    statements.clear()
    keyed = {**headers, "Idempotency-Key": "once"}
    answer = await live_client.post(path, headers=keyed)
    assert answer.status_code == 201, answer.text
    alone = function.removesuffix("_batch")  # a request with a key is never coalesced
    assert sum(f"FROM {alone}(" in s for s in statements) == 1, statements
    assert statements[0].startswith("BEGIN") and statements[-1] == "COMMIT;", statements
    replay = await live_client.post(path, headers=keyed)
    assert replay.headers.get("Idempotent-Replayed") == "true"
    assert replay.json() == answer.json()
