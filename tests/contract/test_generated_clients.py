"""Clients generated from the served /openapi.json with tools nobody here wrote, as an app
team would: openapi-python-client (its own venv, requirements/clients.txt) runs the main
flows against a live server (tests/contract/python_flows.py); openapi-typescript types
must compile with openapi-fetch under `tsc --noEmit` (tests/contract/node/flows.ts); and
Spectral's OpenAPI and OWASP rulesets find nothing (tests/contract/node/.spectral.yaml).
`make test` installs the tools (`make contract-tools`); a missing tool fails, never skips."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from app.core.db import libpq_url
from app.core.security import Role
from app.core.settings import Settings
from tests.live_server import LiveServer

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
NODE = HERE / "node"
BIN = NODE / "node_modules" / ".bin"
CLIENTS_PYTHON = ROOT / ".venv-clients" / "bin" / "python"
GENERATOR = ROOT / ".venv-clients" / "bin" / "openapi-python-client"
# Where Spectral's ruleset expects the document (its overrides name this path).
SPEC = NODE / ".build" / "openapi.json"


def _tool(path: Path) -> str:
    if not path.exists():
        pytest.fail(f"{path} is missing: `make contract-tools` installs it")
    return str(path)


def _run(*args: str, cwd: Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=300, env=env)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{' '.join(args[:2])} failed:\n{output}"
    return output


@pytest.fixture(scope="module")
def served(settings: Settings) -> Iterator[LiveServer]:
    """A live server with its worker (notifications) and a tight sign-in rate limit."""
    tuned = settings.model_copy(
        update={
            "run_worker": True,
            "rate_limit_enabled": True,
            "rate_limit_auth": "10/minute",
            "rate_limit_assign": "10000/minute",
        }
    )
    with LiveServer(tuned) as server:
        yield server


@pytest.fixture(scope="module")
def spec(served: LiveServer) -> Path:
    document = httpx.get(f"{served.url}/openapi.json", timeout=30).json()
    SPEC.parent.mkdir(exist_ok=True)
    SPEC.write_text(json.dumps(document, indent=1))
    return SPEC


async def _admin_token(served: LiveServer, settings: Settings) -> str:
    conn = await asyncpg.connect(libpq_url(settings.database_url or ""), statement_cache_size=0)
    try:
        user_id: uuid.UUID = await conn.fetchval(
            "INSERT INTO users (email, role) VALUES ($1, 'admin') RETURNING id",
            f"client-admin-{uuid.uuid4().hex[:8]}@example.com",
        )
    finally:
        await conn.close()
    return served.tokens.issue(user_id, Role.admin)


async def test_generated_python_client_runs_the_main_flows(
    served: LiveServer, spec: Path, settings: Settings, tmp_path: Path
) -> None:
    generated = _run(
        _tool(GENERATOR),
        "generate",
        "--path",
        str(spec),
        "--meta",
        "none",
        "--output-path",
        str(tmp_path / "couponflash_client"),
        cwd=tmp_path,
    )
    # The generator supports JSON, forms and multipart; the CSV uploads' `text/csv` variant
    # is the one thing it leaves out (the multipart one is generated). Anything else it
    # warns about is a defect of the document.
    uploads = ("POST /api/v1/books/{book_id}/codes ", "POST /api/v1/books/{book_id}/imports ")
    warnings = [
        line
        for line in generated.splitlines()
        if line.startswith(("WARNING", "ERROR")) and not any(u in line for u in uploads)
    ]
    assert not warnings, generated
    assert (tmp_path / "couponflash_client" / "models" / "problem.py").exists()
    token = await _admin_token(served, settings)
    flows = _run(
        _tool(CLIENTS_PYTHON),
        str(HERE / "python_flows.py"),
        served.url,
        token,
        cwd=tmp_path,
        env={"PYTHONPATH": f"{tmp_path}:{ROOT}", "PATH": "/usr/bin:/bin"},
    )
    assert "7 flows passed" in flows, flows


def test_typescript_types_compile_with_openapi_fetch(spec: Path) -> None:
    # Request fields with a default are optional (the server fills them in), not required.
    _run(
        _tool(BIN / "openapi-typescript"),
        str(spec),
        "--default-non-nullable",
        "false",
        "-o",
        str(spec.parent / "schema.d.ts"),
        cwd=NODE,
    )
    _run(_tool(BIN / "tsc"), "--noEmit", "-p", "tsconfig.json", cwd=NODE)


def test_spectral_oas_and_owasp_rulesets_find_nothing(spec: Path) -> None:
    output = _run(
        _tool(BIN / "spectral"),
        "lint",
        str(spec.relative_to(NODE)),
        "--ruleset",
        ".spectral.yaml",
        "--fail-severity",
        "hint",
        cwd=NODE,
    )
    assert "No results with a severity of 'hint' or higher found!" in output, output
