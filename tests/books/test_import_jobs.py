"""Import jobs end to end: uploads answered 202 at once, run by real worker processes
(`python -m app worker`), watched, cancelled, killed, serialised per book."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import asyncpg
import httpx
import pytest

from app.books import import_runner
from app.core.settings import Settings
from bench.common import stop
from tests.books.helpers import API, fill, make_book, unique_codes
from tests.conftest import MakeUser
from tests.helpers import ApiUser, assert_problem, wait_for
from tests.notifications.conftest import spawn_worker

BIG = 100_000  # lines of the "big" files: enough batches to act in the middle of an insert
BATCH = "1000"  # codes per insert batch in the tests' workers
FINISHED = ("done", "failed", "cancelled")

Spawn = Callable[..., subprocess.Popen[bytes]]


@pytest.fixture
def workers(settings: Settings) -> Iterator[Spawn]:
    """Start real worker processes; all stopped (SIGTERM, then SIGKILL) afterwards."""
    started: list[subprocess.Popen[bytes]] = []

    def spawn(**env: str) -> subprocess.Popen[bytes]:
        proc = spawn_worker(settings, IMPORT_BATCH_SIZE=BATCH, **env)
        started.append(proc)
        return proc

    yield spawn
    for proc in started:
        stop(proc, 20)


@pytest.fixture
async def admin_live(make_live_user: MakeUser) -> ApiUser:
    from app.core.security import Role

    return await make_live_user(Role.admin)


def csv_of(codes: list[str], header: bool = True) -> bytes:
    return (("code\n" if header else "") + "\n".join(codes) + "\n").encode()


async def upload(
    client: httpx.AsyncClient, admin: ApiUser, book_id: str, body: bytes, **headers: str
) -> httpx.Response:
    return await client.post(
        f"{API}/books/{book_id}/imports",
        content=body,
        headers={**admin.headers, "Content-Type": "text/csv", **headers},
    )


async def start(
    client: httpx.AsyncClient, admin: ApiUser, book_id: str, body: bytes
) -> dict[str, Any]:
    resp = await upload(client, admin, book_id, body)
    assert resp.status_code == 202, resp.text
    job: dict[str, Any] = resp.json()
    assert resp.headers["location"] == f"/api/v1/imports/{job['id']}"
    return job


async def job_state(client: httpx.AsyncClient, admin: ApiUser, job_id: str) -> dict[str, Any]:
    resp = await client.get(f"{API}/imports/{job_id}", headers=admin.headers)
    assert resp.status_code == 200, resp.text
    job: dict[str, Any] = resp.json()
    return job


async def finished(client: httpx.AsyncClient, admin: ApiUser, job_id: str) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        job = await job_state(client, admin, job_id)
        return job if job["state"] in FINISHED else None

    job: dict[str, Any] = await wait_for(check, timeout=120, every=0.1, what=f"job {job_id} ends")
    return job


async def mid_insert(pg: asyncpg.Connection, job_id: str) -> None:
    """Wait until the job is inserting and has published progress (some batches in)."""
    await wait_for(
        lambda: pg.fetchval(
            "SELECT state = 'inserting' AND lines_done > 0 FROM import_jobs WHERE id = $1",
            uuid.UUID(job_id),
        ),
        timeout=120,
        every=0.01,
        what="the job inserting",
    )


async def codes_in(pg: asyncpg.Connection, book_id: str) -> int:
    return int(
        await pg.fetchval("SELECT count(*) FROM codes WHERE book_id = $1", uuid.UUID(book_id))
    )


async def staging_exists(pg: asyncpg.Connection, job_id: str) -> bool:
    name = f"import_staging_{uuid.UUID(job_id).hex}"
    return bool(await pg.fetchval("SELECT to_regclass($1) IS NOT NULL", name))


@pytest.fixture
async def book(live_client: httpx.AsyncClient, admin_live: ApiUser) -> dict[str, Any]:
    return await make_book(live_client, admin_live, max_codes_per_user=None)


# --- happy path and the request's own checks ----------------------------------------------


async def test_import_job_stores_the_file_and_reports_counts(
    live_client: httpx.AsyncClient,
    admin_live: ApiUser,
    pg: asyncpg.Connection,
    book: dict[str, Any],
    workers: Spawn,
) -> None:
    old = unique_codes(3)
    await fill(live_client, admin_live, book["id"], old)
    new = unique_codes(BIG)
    body = csv_of([*new, "", new[0].lower(), old[0], "  " + new[1] + " "])
    job = await start(live_client, admin_live, book["id"], body)
    assert job["state"] == "received"
    assert job["received_bytes"] == len(body)
    assert job["lines_total"] == BIG + 5  # header and blank line included
    workers()
    job = await finished(live_client, admin_live, job["id"])
    assert job["state"] == "done", job
    assert (job["inserted"], job["duplicates_in_file"], job["already_present"]) == (BIG, 2, 1)
    assert job["progress"] == 1.0 and job["lines_done"] == job["lines_total"]
    assert job["error_count"] == 0 and job["errors"] == []
    assert job["started_at"] and job["finished_at"]
    assert await codes_in(pg, book["id"]) == BIG + 3
    assert not await staging_exists(pg, job["id"])
    assert (
        await pg.fetchval(
            "SELECT inserted FROM imports WHERE book_id = $1 ORDER BY at DESC LIMIT 1",
            uuid.UUID(book["id"]),
        )
        == BIG
    )
    listed = await live_client.get(f"{API}/books/{book['id']}/imports", headers=admin_live.headers)
    assert [j["id"] for j in listed.json()["items"]] == [job["id"]]
    report = await live_client.get(
        f"{API}/imports/{job['id']}/errors.csv", headers=admin_live.headers
    )
    assert report.status_code == 200 and report.text == "line,code,reason\r\n"
    again = await live_client.delete(f"{API}/imports/{job['id']}", headers=admin_live.headers)
    assert_problem(again, 409, "import-finished")


async def test_upload_problems_store_no_job(
    client: httpx.AsyncClient, admin: ApiUser, user: ApiUser
) -> None:
    book = await make_book(client, admin)
    resp = await upload(client, admin, str(uuid.uuid4()), b"A1\n")
    assert_problem(resp, 404, "not-found")
    resp = await client.post(
        f"{API}/books/{book['id']}/imports",
        content=b"{}",
        headers={**admin.headers, "Content-Type": "application/json"},
    )
    assert_problem(resp, 415, "unsupported-media-type")
    assert_problem(await upload(client, user, book["id"], b"A1\n"), 403, "forbidden")
    assert_problem(
        await client.get(f"{API}/imports/{uuid.uuid4()}", headers=admin.headers), 404, "not-found"
    )
    assert_problem(
        await client.delete(f"{API}/imports/{uuid.uuid4()}", headers=admin.headers),
        404,
        "not-found",
    )
    listed = await client.get(f"{API}/books/{book['id']}/imports", headers=admin.headers)
    assert listed.json() == {"items": [], "next_cursor": None}
    bad = await client.get(f"{API}/books/{book['id']}/imports?cursor=nope", headers=admin.headers)
    assert_problem(bad, 422, "validation-error")


async def test_same_idempotency_key_replays_the_job(
    client: httpx.AsyncClient, admin: ApiUser
) -> None:
    book = await make_book(client, admin)
    body = csv_of(unique_codes(10))
    first = await upload(client, admin, book["id"], body, **{"Idempotency-Key": "imp-1"})
    second = await upload(client, admin, book["id"], body, **{"Idempotency-Key": "imp-1"})
    assert first.status_code == second.status_code == 202
    assert second.headers["idempotent-replayed"] == "true"
    assert second.json()["id"] == first.json()["id"]
    assert second.headers["location"] == first.headers["location"]
    other = await upload(client, admin, book["id"], b"B1\n", **{"Idempotency-Key": "imp-1"})
    assert_problem(other, 422, "idempotency-key-reused")
    listed = await client.get(f"{API}/books/{book['id']}/imports", headers=admin.headers)
    assert len(listed.json()["items"]) == 1


async def test_book_imports_are_keyset_pages_newest_first(
    live_client: httpx.AsyncClient, admin_live: ApiUser
) -> None:
    client, admin = live_client, admin_live  # committed: each job created at its own time
    book = await make_book(client, admin)
    ids = [(await start(client, admin, book["id"], csv_of([f"P{i}"])))["id"] for i in range(3)]
    first = await client.get(f"{API}/books/{book['id']}/imports?limit=2", headers=admin.headers)
    page = first.json()
    assert [j["id"] for j in page["items"]] == ids[::-1][:2]
    rest = await client.get(
        f"{API}/books/{book['id']}/imports?limit=2&cursor={page['next_cursor']}",
        headers=admin.headers,
    )
    assert [j["id"] for j in rest.json()["items"]] == ids[:1]
    assert rest.json()["next_cursor"] is None


# --- all or nothing ------------------------------------------------------------------------


async def test_bad_lines_at_start_middle_and_end_fail_the_job_and_are_reported(
    live_client: httpx.AsyncClient,
    admin_live: ApiUser,
    pg: asyncpg.Connection,
    book: dict[str, Any],
    workers: Spawn,
) -> None:
    codes = unique_codes(BIG)
    codes[0] = "bad code"  # line 2 (after the header)
    codes[BIG // 2] = "x" * 65  # too long
    codes[-1] = "semi;colon"
    job = await start(live_client, admin_live, book["id"], csv_of(codes))
    workers()
    job = await finished(live_client, admin_live, job["id"])
    assert job["state"] == "failed"
    assert job["error_count"] == 3
    assert [e["line"] for e in job["errors"]] == [2, BIG // 2 + 2, BIG + 1]
    assert job["errors"][1]["reason"] == "longer than 64 characters"
    assert await codes_in(pg, book["id"]) == 0
    report = await live_client.get(
        f"{API}/imports/{job['id']}/errors.csv", headers=admin_live.headers
    )
    assert report.status_code == 200
    assert report.headers["content-type"].startswith("text/csv")
    lines = report.text.splitlines()
    assert lines[0] == "line,code,reason"
    assert [row.split(",")[0] for row in lines[1:]] == ["2", str(BIG // 2 + 2), str(BIG + 1)]
    assert await staging_exists(pg, job["id"])  # kept for the report until retention ends


async def test_code_of_another_book_fails_the_job_naming_its_lines(
    live_client: httpx.AsyncClient,
    admin_live: ApiUser,
    pg: asyncpg.Connection,
    book: dict[str, Any],
    workers: Spawn,
) -> None:
    other = await make_book(live_client, admin_live)
    taken = unique_codes(1)[0]
    await fill(live_client, admin_live, other["id"], [taken])
    codes = unique_codes(2000)
    codes[700] = taken.lower()
    job = await start(live_client, admin_live, book["id"], csv_of(codes))
    workers()
    job = await finished(live_client, admin_live, job["id"])
    assert job["state"] == "failed"
    assert job["errors"] == [{"line": 702, "code": taken, "reason": "belongs to another book"}]
    assert await codes_in(pg, book["id"]) == 0
    report = await live_client.get(
        f"{API}/imports/{job['id']}/errors.csv", headers=admin_live.headers
    )
    assert report.text.splitlines()[1:] == [f"702,{taken},belongs to another book"]


# --- cancel, crash, one job per book, assigns meanwhile ---------------------------------


async def test_cancel_mid_insert_stores_nothing(
    live_client: httpx.AsyncClient,
    admin_live: ApiUser,
    pg: asyncpg.Connection,
    book: dict[str, Any],
    workers: Spawn,
) -> None:
    job = await start(live_client, admin_live, book["id"], csv_of(unique_codes(BIG)))
    workers()
    await mid_insert(pg, job["id"])
    resp = await live_client.delete(f"{API}/imports/{job['id']}", headers=admin_live.headers)
    assert resp.status_code == 200, resp.text
    assert resp.json()["state"] == "cancelled"
    # The worker notices at its next batch, rolls back and drops the staging table.
    await wait_for(lambda: _not(staging_exists(pg, job["id"])), timeout=60, what="staging dropped")
    assert await codes_in(pg, book["id"]) == 0
    job = await job_state(live_client, admin_live, job["id"])
    assert job["state"] == "cancelled" and job["finished_at"]
    again = await live_client.delete(f"{API}/imports/{job['id']}", headers=admin_live.headers)
    assert again.status_code == 200 and again.json()["state"] == "cancelled"


async def _not(value: Any) -> bool:
    return not await value


async def test_worker_killed_mid_insert_leaves_nothing_and_the_job_finishes_once(
    live_client: httpx.AsyncClient,
    admin_live: ApiUser,
    pg: asyncpg.Connection,
    book: dict[str, Any],
    workers: Spawn,
) -> None:
    codes = unique_codes(BIG)
    job = await start(live_client, admin_live, book["id"], csv_of(codes))
    first = workers()
    await mid_insert(pg, job["id"])
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)
    # Nothing of the unfinished job is visible, before or after the kill.
    assert await codes_in(pg, book["id"]) == 0
    workers()
    job = await finished(live_client, admin_live, job["id"])
    assert job["state"] == "done", job
    assert job["inserted"] == BIG
    assert await codes_in(pg, book["id"]) == BIG
    assert await pg.fetchval(
        "SELECT count(DISTINCT code) = count(*) FROM codes WHERE book_id = $1",
        uuid.UUID(book["id"]),
    )
    outbox_job = await pg.fetchrow(
        "SELECT status, attempts FROM outbox WHERE topic = 'books.import' AND key = $1", job["id"]
    )
    assert outbox_job is not None and outbox_job["status"] == "done"
    assert outbox_job["attempts"] == 2
    assert (
        await pg.fetchval("SELECT count(*) FROM imports WHERE book_id = $1", uuid.UUID(book["id"]))
        == 1
    )


async def test_two_jobs_of_one_book_run_one_after_the_other(
    live_client: httpx.AsyncClient,
    admin_live: ApiUser,
    pg: asyncpg.Connection,
    book: dict[str, Any],
    workers: Spawn,
) -> None:
    jobs = [
        await start(live_client, admin_live, book["id"], csv_of(unique_codes(BIG // 2)))
        for _ in range(2)
    ]
    ids = [uuid.UUID(j["id"]) for j in jobs]
    workers(WORKER_CONCURRENCY="4")
    states: set[tuple[str, ...]] = set()

    async def both_finished() -> bool:
        rows = await pg.fetch(
            "SELECT state FROM import_jobs WHERE id = ANY($1) ORDER BY state", ids
        )
        seen = tuple(r["state"] for r in rows)
        states.add(seen)
        return all(s in FINISHED for s in seen)

    await wait_for(both_finished, timeout=120, every=0.01, what="both jobs finished")
    assert ("inserting", "queued") in states, states  # the second waited, visibly
    assert not any(s.count("inserting") + s.count("validating") > 1 for s in states), states
    for job in jobs:
        assert (await job_state(live_client, admin_live, job["id"]))["state"] == "done"
    assert await codes_in(pg, book["id"]) == BIG


async def test_assigns_during_an_import_never_get_its_codes(
    live_client: httpx.AsyncClient,
    admin_live: ApiUser,
    make_live_user: MakeUser,
    pg: asyncpg.Connection,
    book: dict[str, Any],
    workers: Spawn,
) -> None:
    seeded = set(unique_codes(1000))
    await fill(live_client, admin_live, book["id"], sorted(seeded))
    user = await make_live_user()
    job = await start(live_client, admin_live, book["id"], csv_of(unique_codes(BIG)))
    workers()
    await mid_insert(pg, job["id"])
    got: list[str] = []
    while len(got) < 500:
        resp = await live_client.post(
            f"{API}/books/{book['id']}/assign",
            json={"user_id": str(user.id)},
            headers=admin_live.headers,
        )
        assert resp.status_code == 201, resp.text
        # Read after the assign answered: still inserting means the job had not committed
        # while the assign ran, so its code must be one stored before.
        if (await job_state(live_client, admin_live, job["id"]))["state"] != "inserting":
            break
        got.append(resp.json()["code"])
    assert got, "no assign ran during the insert"
    assert set(got) <= seeded
    assert (await finished(live_client, admin_live, job["id"]))["state"] == "done"


# --- generation as a job, retention -----------------------------------------------------


async def test_generation_as_a_job(
    live_client: httpx.AsyncClient,
    admin_live: ApiUser,
    pg: asyncpg.Connection,
    book: dict[str, Any],
    workers: Spawn,
) -> None:
    url = f"{API}/books/{book['id']}/codes/generate"
    resp = await live_client.post(
        url,
        json={"count": 20_000, "prefix": "GJ-", "length": 8, "async": True},
        headers=admin_live.headers,
    )
    assert resp.status_code == 202, resp.text
    job = resp.json()
    assert resp.headers["location"] == f"/api/v1/imports/{job['id']}"
    assert (job["kind"], job["state"], job["lines_total"]) == ("generate", "received", 20_000)
    workers()
    job = await finished(live_client, admin_live, job["id"])
    assert job["state"] == "done" and job["inserted"] == 20_000
    assert await codes_in(pg, book["id"]) == 20_000
    too_many = await live_client.post(url, json={"count": 10_000_001}, headers=admin_live.headers)
    assert_problem(too_many, 422, "validation-error")
    too_small = await live_client.post(
        url, json={"count": 100, "pattern": "#", "async": True}, headers=admin_live.headers
    )
    assert_problem(too_small, 422, "validation-error")


async def test_retention_deletes_finished_jobs_and_their_staging(
    live_client: httpx.AsyncClient,
    admin_live: ApiUser,
    pg: asyncpg.Connection,
    book: dict[str, Any],
    workers: Spawn,
) -> None:
    job = await start(live_client, admin_live, book["id"], csv_of(["ok-1", "not ok"]))
    workers()
    assert (await finished(live_client, admin_live, job["id"]))["state"] == "failed"
    assert await staging_exists(pg, job["id"])
    running = await start(live_client, admin_live, book["id"], csv_of(["ok-2"]))
    await pg.execute(
        "UPDATE import_jobs SET finished_at = now() - interval '2 hours' WHERE id = $1",
        uuid.UUID(job["id"]),
    )
    assert await import_runner.purge_finished(pg, 3600, 10) >= 1
    assert not await staging_exists(pg, job["id"])
    gone = await live_client.get(f"{API}/imports/{job['id']}", headers=admin_live.headers)
    assert_problem(gone, 404, "not-found")
    # A job finished recently, or not finished, stays.
    assert (await finished(live_client, admin_live, running["id"]))["state"] == "done"
    assert await import_runner.purge_finished(pg, 3600, 10) == 0


async def test_worker_stopped_mid_insert_hands_the_job_back_with_nothing_stored(
    live_client: httpx.AsyncClient,
    admin_live: ApiUser,
    pg: asyncpg.Connection,
    book: dict[str, Any],
    workers: Spawn,
) -> None:
    job = await start(live_client, admin_live, book["id"], csv_of(unique_codes(BIG)))
    first = workers()
    await mid_insert(pg, job["id"])
    first.send_signal(signal.SIGTERM)  # graceful: the job stops at its next batch
    assert await asyncio.to_thread(first.wait, 30) == 0
    assert (await job_state(live_client, admin_live, job["id"]))["state"] == "received"
    assert await codes_in(pg, book["id"]) == 0
    outbox_job = await pg.fetchrow(
        "SELECT status, attempts FROM outbox WHERE topic = 'books.import' AND key = $1", job["id"]
    )
    assert outbox_job is not None and dict(outbox_job) == {"status": "pending", "attempts": 0}
    workers()
    assert (await finished(live_client, admin_live, job["id"]))["state"] == "done"
    assert await codes_in(pg, book["id"]) == BIG


async def test_multipart_upload_is_stored_as_a_job(
    client: httpx.AsyncClient, admin: ApiUser
) -> None:
    book = await make_book(client, admin)
    resp = await client.post(
        f"{API}/books/{book['id']}/imports",
        files={"file": ("codes.csv", b"code\nM-1\nM-2\n", "text/csv")},
        headers=admin.headers,
    )
    assert resp.status_code == 202, resp.text
    assert (resp.json()["state"], resp.json()["lines_total"]) == ("received", 3)
    missing = await client.post(
        f"{API}/books/{book['id']}/imports",
        files={"other": ("codes.csv", b"M-1\n", "text/csv")},
        headers=admin.headers,
    )
    assert_problem(missing, 422, "validation-error")
