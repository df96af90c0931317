from __future__ import annotations

import os
import subprocess
import sys
import uuid

import httpx

from app.core.settings import Settings


def _cli(settings: Settings, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "DATABASE_URL": settings.database_url or "",
        "DATA_DIR": str(settings.data_dir),
    }
    return subprocess.run(
        [sys.executable, "-m", "app", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


async def test_create_admin_from_stdin_then_log_in(
    settings: Settings, live_client: httpx.AsyncClient
) -> None:
    email = f"boss-{uuid.uuid4().hex[:8]}@example.com"
    first = _cli(settings, "create-admin", email, "--password-stdin", stdin="a-long-password\n")
    assert first.returncode == 0, first.stderr
    assert "created" in first.stdout
    again = _cli(settings, "create-admin", email, "--password-stdin", stdin="a-long-password\n")
    assert again.returncode == 0 and "already" in again.stdout
    token = await live_client.post(
        "/api/v1/auth/token", data={"username": email, "password": "a-long-password"}
    )
    assert token.status_code == 200
    users = await live_client.get(
        "/api/v1/users", headers={"Authorization": f"Bearer {token.json()['access_token']}"}
    )
    assert users.status_code == 200


def test_create_admin_refuses_short_password(settings: Settings) -> None:
    result = _cli(settings, "create-admin", "x@example.com", "--password-stdin", stdin="short\n")
    assert result.returncode == 2
