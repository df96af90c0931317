from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import pytest

from app.books.cli import _import
from app.core.security import Role
from app.core.settings import Settings
from bench.common import stop
from tests.books.helpers import API, make_book, unique_codes
from tests.conftest import MakeUser
from tests.notifications.conftest import spawn_worker


async def test_import_codes_command_runs_an_import_job(
    settings: Settings,
    database_url: str,
    live_client: httpx.AsyncClient,
    make_live_user: MakeUser,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    admin = await make_live_user(Role.admin)
    book = await make_book(live_client, admin)
    path = tmp_path / "codes.csv"
    path.write_text("code\n" + "\n".join(unique_codes(25)) + "\n")
    worker = spawn_worker(settings)
    try:
        assert await _import(settings, database_url, uuid.UUID(book["id"]), path) == 0
        assert '"inserted":25' in capsys.readouterr().out
        got = (await live_client.get(f"{API}/books/{book['id']}", headers=admin.headers)).json()
        assert got["stats"]["total"] == 25
        bad = tmp_path / "bad.csv"
        bad.write_text("GOOD-1\nnot good\n")
        assert await _import(settings, database_url, uuid.UUID(book["id"]), bad) == 1
        err = capsys.readouterr().err
        assert "failed: 1 invalid line(s)" in err and '"line":2' in err
    finally:
        stop(worker, 20)
    jobs = await live_client.get(f"{API}/books/{book['id']}/imports", headers=admin.headers)
    assert [j["state"] for j in jobs.json()["items"]] == ["failed", "done"]


async def test_import_codes_command_refuses_an_unknown_book(
    settings: Settings, database_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "codes.csv"
    path.write_text("A-1\n")
    assert await _import(settings, database_url, uuid.uuid4(), path) == 1
    assert "not-found" in capsys.readouterr().err
