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


def test_help_lists_the_domain_commands(settings: Settings) -> None:
    """`app/cli.py` registers every command, the domains' included."""
    result = _cli(settings, "--help")
    assert result.returncode == 0, result.stderr
    for command in ("serve", "migrate", "create-admin", "check", "import-codes", "worker"):
        assert command in result.stdout, command
    for command in ("import-codes", "worker"):
        sub = _cli(settings, command, "--help")
        assert sub.returncode == 0 and "Usage:" in sub.stdout, sub.stderr


def test_no_module_imports_the_command_line() -> None:
    """Domains offer plain functions; only the entry point (`python -m app`) imports the CLI,
    so nothing is registered by the side effect of an import cycle."""
    import ast
    from pathlib import Path

    app_dir = Path(__file__).resolve().parents[1] / "app"
    importers = []
    for path in app_dir.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else []
            )
            if "app.cli" in names:
                importers.append(str(path.relative_to(app_dir)))
    assert importers == ["__main__.py"]
