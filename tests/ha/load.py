"""The load of `make test-ha`: clients that assign codes, lock and redeem held codes, reserve
and purchase promo units through the API's load balancer, every request with an
`Idempotency-Key`, and every client-visible outcome kept (ok, definite failure, unknown);
then the unknown ones retried with their keys, and the database checked against what the
clients were told."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx

from tests.faults.harness import API, User, problem_slug

# Answers after which the same key is sent again: nothing definite is known yet.
_AGAIN = {"unavailable", "busy", "idempotency-key-in-use"}
RESOLVE_S = 60.0
# The writes whose every acknowledgment is checked against the database (locks lapse and
# reservations are checked through their purchase).
CHECKED = ("assign", "redeem", "purchase")


@dataclass
class Outcome:
    op: str
    user: int
    key: str
    path: str
    body: dict[str, Any]
    started: float
    ended: float = 0.0
    status: int | None = None
    kind: str = ""  # ok | definite | unknown | bad
    result: dict[str, Any] | None = None
    served_by: str | None = None
    final: str = ""  # ok | definite | unresolved, after the retries
    replayed: bool = False


def classify(answer: httpx.Response | BaseException) -> str:
    """ok (2xx); unknown (connection lost, or 503 `outcome: unknown`); definite (any other
    RFC 9457 4xx or 503); bad (a 5xx other than 503, or an error that is not a problem)."""
    if isinstance(answer, BaseException):
        return "unknown" if isinstance(answer, httpx.TransportError) else "bad"
    if 200 <= answer.status_code < 300:
        return "ok"
    slug = problem_slug(answer)
    if slug is None or (answer.status_code >= 500 and answer.status_code != 503):
        return "bad"
    if answer.status_code == 503 and answer.json().get("outcome") == "unknown":
        return "unknown"
    if slug == "idempotency-key-in-use":
        return "unknown"
    return "definite"


@dataclass
class Load:
    http: httpx.AsyncClient
    users: list[User]
    book: uuid.UUID
    held: dict[int, str]  # user index -> the code they lock and redeem
    promo: uuid.UUID
    outcomes: list[Outcome] = field(default_factory=list)
    bad: list[str] = field(default_factory=list)
    running: asyncio.Event = field(default_factory=asyncio.Event)
    busy: int = 0
    _stop: bool = False

    async def send(self, op: str, user: int, path: str, body: dict[str, Any]) -> Outcome:
        out = Outcome(op, user, uuid.uuid4().hex, path, body, time.monotonic())
        self.outcomes.append(out)
        answer = await self._post(out)
        out.ended = time.monotonic()
        out.kind = self._note(out, answer)
        if out.kind in ("ok", "definite"):
            out.final = out.kind
        return out

    async def _post(self, out: Outcome) -> httpx.Response | BaseException:
        headers = {**self.users[out.user].headers, "Idempotency-Key": out.key}
        try:
            return await self.http.post(out.path, json=out.body, headers=headers)
        except httpx.HTTPError as exc:
            return exc

    def _note(self, out: Outcome, answer: httpx.Response | BaseException) -> str:
        kind = classify(answer)
        if isinstance(answer, httpx.Response):
            out.status = answer.status_code
            out.served_by = answer.headers.get("x-served-by")
            if kind == "ok":
                out.result = answer.json()
                out.replayed = answer.headers.get("idempotent-replayed") == "true"
        if kind == "bad":
            text = answer.text[:200] if isinstance(answer, httpx.Response) else repr(answer)
            self.bad.append(f"{out.op} {out.status}: {text}")
        return kind

    # Clients -----------------------------------------------------------------------------

    async def _gate(self) -> None:
        if not self.running.is_set():
            self.busy -= 1
            await self.running.wait()
            self.busy += 1

    async def _pause_after(self, out: Outcome) -> None:
        if out.kind != "ok":
            await asyncio.sleep(0.2)

    async def assigner(self, user: int) -> None:
        while not self._stop:
            await self._gate()
            out = await self.send("assign", user, f"{API}/books/{self.book}/assign", {})
            await self._pause_after(out)

    async def redeemer(self, user: int) -> None:
        code = self.held[user]
        while not self._stop:
            await self._gate()
            lock = await self.send("lock", user, f"{API}/codes/{code}/lock", {"ttl_seconds": 5})
            if lock.kind != "ok" or lock.result is None:
                await asyncio.sleep(0.2)
                continue
            key_ref = uuid.uuid4().hex
            redeem = await self.send(
                "redeem",
                user,
                f"{API}/codes/{code}/redeem",
                {"lock_id": lock.result["lock_id"], "order_ref": key_ref},
            )
            await self._pause_after(redeem)

    async def buyer(self, user: int) -> None:
        while not self._stop:
            await self._gate()
            reserve = await self.send("reserve", user, f"{API}/promos/{self.promo}/reserve", {})
            if reserve.kind != "ok" or reserve.result is None:
                await asyncio.sleep(0.2)
                continue
            purchase = await self.send(
                "purchase", user, f"{API}/reservations/{reserve.result['id']}/purchase", {}
            )
            await self._pause_after(purchase)

    def start(self, per_kind: int) -> list[asyncio.Task[None]]:
        self.running.set()
        tasks = []
        for i in range(per_kind):
            tasks.append(asyncio.create_task(self.assigner(i)))
            tasks.append(asyncio.create_task(self.redeemer(per_kind + i)))
            tasks.append(asyncio.create_task(self.buyer(2 * per_kind + i)))
        self.busy = len(tasks)
        return tasks

    async def pause(self) -> None:
        """Stop the clients between requests; returns once none is in flight."""
        self.running.clear()
        deadline = time.monotonic() + 60
        while self.busy > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    def resume(self) -> None:
        self.running.set()

    def stop(self) -> None:
        self._stop = True
        self.running.set()

    # After a fault -----------------------------------------------------------------------

    async def resolve(self, outcomes: list[Outcome]) -> None:
        """Send every unknown outcome again with its key until the answer is definite."""
        await asyncio.gather(*(self._settle(o) for o in outcomes if o.kind == "unknown"))

    async def _settle(self, out: Outcome) -> None:
        deadline = time.monotonic() + RESOLVE_S
        while time.monotonic() < deadline:
            answer = await self._post(out)
            kind = classify(answer)
            if kind == "bad":
                self._note(out, answer)
                out.final = "bad"
                return
            if kind == "definite" and problem_slug(answer) in _AGAIN:  # type: ignore[arg-type]
                kind = "unknown"
            if kind != "unknown":
                assert isinstance(answer, httpx.Response)
                out.final = kind
                if kind == "ok":
                    out.result = answer.json()
                    out.replayed = answer.headers.get("idempotent-replayed") == "true"
                return
            await asyncio.sleep(0.5)
        out.final = "unresolved"


@dataclass
class Ledger:
    """What the database holds against what the clients were finally told."""

    acknowledged: int = 0
    lost: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    unresolved: int = 0


async def reconcile(url: str, load: Load) -> Ledger:
    ledger = Ledger()
    finals = [o for o in load.outcomes if o.final]
    ledger.unresolved = sum(
        1 for o in load.outcomes if o.kind == "unknown" and o.final in ("", "unresolved")
    )
    ok = [o for o in finals if o.final == "ok"]
    ledger.acknowledged = sum(1 for o in ok if o.op in CHECKED)
    conn = await asyncpg.connect(url)
    try:
        # Assign: the codes held by the load's users are exactly the ones they were told.
        told = {
            o.result["code"]: load.users[o.user].id for o in ok if o.op == "assign" and o.result
        }
        held = {
            r["code"]: r["user_id"]
            for r in await conn.fetch(
                "SELECT code, user_id FROM codes WHERE book_id = $1 AND user_id IS NOT NULL",
                load.book,
            )
        }
        ledger.lost += [f"assign {c}" for c, u in told.items() if held.get(c) != u]
        ledger.duplicated += [f"assign {c}" for c in held.keys() - told.keys()]
        # Redeem: one redemption per acknowledged order_ref, none for any other.
        refs = Counter(
            r["ref"]
            for r in await conn.fetch(
                "SELECT h.details->>'order_ref' AS ref FROM redemption_history h"
                " JOIN codes c ON c.id = h.code_id"
                " WHERE h.action = 'redeemed' AND c.code = ANY($1::text[])",
                list(load.held.values()),
            )
        )
        acked = Counter(o.body["order_ref"] for o in ok if o.op == "redeem")
        ledger.lost += [f"redeem {r}" for r in acked if refs[r] == 0]
        ledger.duplicated += [f"redeem {r} x{n}" for r, n in refs.items() if n > acked[r]]
        # Purchase: the purchased reservations are exactly the acknowledged ones.
        bought = {o.result["id"] for o in ok if o.op == "purchase" and o.result}
        stored = {
            str(r["id"])
            for r in await conn.fetch(
                "SELECT id FROM reservations WHERE promo_id = $1 AND status = 'purchased'",
                load.promo,
            )
        }
        ledger.lost += [f"purchase {r}" for r in bought - stored]
        ledger.duplicated += [f"purchase {r}" for r in stored - bought]
    finally:
        await conn.close()
    return ledger


@dataclass
class Stream:
    """One user's live notification stream (SSE), kept open through every fault: whenever
    it is cut it reconnects with `Last-Event-ID`, as a browser's EventSource does."""

    user: User
    ids: list[int] = field(default_factory=list)
    connects: int = 0
    after: int | None = None

    async def follow(self, http: httpx.AsyncClient, stop: asyncio.Event) -> None:
        while not stop.is_set():
            headers = dict(self.user.headers)
            if self.after is not None:
                headers["Last-Event-ID"] = str(self.after)
            try:
                async with http.stream(
                    "GET", f"{API}/me/notifications/stream", headers=headers
                ) as response:
                    if response.status_code != 200:
                        await asyncio.sleep(0.5)
                        continue
                    self.connects += 1
                    await self._read(response, stop)
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.2)

    async def _read(self, response: httpx.Response, stop: asyncio.Event) -> None:
        event, data, ident = "", "", ""
        async for line in response.aiter_lines():
            if stop.is_set():
                return
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                data = line[5:].strip()
            elif line.startswith("id:"):
                ident = line[3:].strip()
            elif not line:
                if event == "ready" and self.after is None:
                    self.after = int(json.loads(data)["after"])
                elif event == "notification":
                    self.ids.append(int(ident))
                    self.after = int(ident)
                event, data, ident = "", "", ""
