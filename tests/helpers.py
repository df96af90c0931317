"""Helpers shared by tests: API users with tokens, problem assertions."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import httpx

from app.core.security import Role


@dataclass
class ApiUser:
    id: uuid.UUID
    email: str
    role: Role
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def assert_problem(response: httpx.Response, status: int, slug: str) -> dict[str, object]:
    """The response is an RFC 9457 problem with this status and slug."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json"), response.headers
    body: dict[str, object] = response.json()
    assert body["status"] == status
    assert str(body["type"]).endswith(f"/{slug}"), body
    assert body.get("detail")
    return body


async def assert_invariants(app: object) -> None:
    """Every invariant check of `app.check` holds on the test database."""
    from app.check import run_checks, violations

    engine = app.state.db.engine  # type: ignore[attr-defined]
    async with engine.connect() as conn:
        raw = await conn.get_raw_connection()
        outcomes = await run_checks(raw.driver_connection)
    bad = violations(outcomes)
    assert not bad, "\n".join(f"{o.check.name}: {o.rows}" for o in bad)
