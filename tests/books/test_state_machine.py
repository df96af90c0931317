"""Random sequences of assign / lock / unlock / redeem checked against a model of the
state machine, with history rows counted against the model's successful transitions."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.ext.asyncio import AsyncConnection

from tests.books.helpers import API, fill, history_count, make_book, unique_codes
from tests.conftest import MakeUser
from tests.helpers import ApiUser

MAX_CODES = 2
MAX_USES = 2


@dataclass
class ModelCode:
    holder: int | None = None
    redemptions: int = 0
    lock_id: str | None = None

    @property
    def status(self) -> str:
        if self.holder is None:
            return "unassigned"
        if self.redemptions >= MAX_USES:
            return "redeemed"
        return "locked" if self.lock_id else "assigned"


@dataclass
class Model:
    codes: dict[str, ModelCode]
    transitions: int = 0
    held: dict[int, int] = field(default_factory=dict)

    def expect(self, op: str, who: int, code: str | None, use_id: bool) -> str:
        """The slug (or 'ok') the service must answer."""
        if op == "assign":
            if self.held.get(who, 0) >= MAX_CODES:
                return "code-limit-reached"
            if all(c.holder is not None for c in self.codes.values()):
                return "book-exhausted"
            return "ok"
        assert code is not None
        state = self.codes[code]
        if state.holder != who:
            return "not-found"
        if op == "lock":
            if state.status == "redeemed":
                return "redemption-limit-reached"
            if state.lock_id and not use_id:
                return "code-locked"
            return "ok"
        if op == "unlock":
            if state.lock_id and not use_id:
                return "code-locked"
            return "ok"
        if state.status == "redeemed":
            return "redemption-limit-reached"
        if state.lock_id and not use_id:
            return "code-locked"
        return "ok"


OPS = st.lists(
    st.tuples(
        st.sampled_from(["assign", "lock", "unlock", "redeem"]),
        st.integers(0, 1),  # which user
        st.integers(0, 2),  # which code
        st.booleans(),  # send the live lock_id?
    ),
    min_size=1,
    max_size=14,
)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(ops=OPS)
async def test_random_sequences_follow_the_model(
    ops: list[tuple[str, int, int, bool]],
    client: httpx.AsyncClient,
    admin: ApiUser,
    make_user: MakeUser,
    conn: AsyncConnection,
) -> None:
    book = await make_book(
        client, admin, max_codes_per_user=MAX_CODES, max_redemptions_per_code=MAX_USES
    )
    names = unique_codes(3)
    await fill(client, admin, book["id"], names)
    users = [await make_user(), await make_user()]
    model = Model(codes={n: ModelCode() for n in names})
    for op, who, index, use_id in ops:
        code = names[index]
        expected = model.expect(op, who, None if op == "assign" else code, use_id)
        headers = users[who].headers
        body: dict[str, Any] = {}
        if use_id and model.codes[code].lock_id:
            body["lock_id"] = model.codes[code].lock_id
        if op == "assign":
            resp = await client.post(f"{API}/books/{book['id']}/assign", headers=headers)
        else:
            resp = await client.post(f"{API}/codes/{code}/{op}", json=body, headers=headers)
        got = "ok" if resp.status_code < 300 else str(resp.json()["type"]).rsplit("/", 1)[-1]
        assert got == expected, (op, who, code, use_id, resp.text)
        if got != "ok":
            continue
        data = resp.json()
        if op == "assign":
            assigned = model.codes[data["code"]]
            assert assigned.holder is None
            assigned.holder = who
            model.held[who] = model.held.get(who, 0) + 1
            model.transitions += 1
        elif op == "lock":
            state = model.codes[code]
            if state.lock_id and use_id:
                assert data["lock_id"] == state.lock_id
            state.lock_id = data["lock_id"]
            model.transitions += 1
        elif op == "unlock":
            state = model.codes[code]
            if state.lock_id:
                state.lock_id = None
                model.transitions += 1
        else:
            state = model.codes[code]
            state.redemptions += 1
            state.lock_id = None
            model.transitions += 1
            assert data["redemptions"] == state.redemptions
        for name, state in model.codes.items():
            row = (await client.get(f"{API}/codes/{name}", headers=admin.headers)).json()
            assert row["status"] == state.status, (name, row)
            assert row["redemptions"] == state.redemptions
            holder = None if state.holder is None else str(users[state.holder].id)
            assert row["user_id"] == holder
    assert await history_count(conn, book["id"]) == model.transitions
