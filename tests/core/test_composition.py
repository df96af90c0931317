"""One composition layer: `app/core` knows no domain, services are built once in the
lifespan and handed to requests, never looked up in `app.state` or read from the
environment at request time, and each dependency is defined once."""

from __future__ import annotations

import ast
from pathlib import Path

import app as app_package
from app.api import deps

APP = Path(app_package.__file__).parent
DOMAINS = ("auth", "books", "promos", "notifications", "segments", "console", "api")


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_core_imports_no_domain_and_not_the_composition_layer() -> None:
    offenders = sorted(
        f"{path.relative_to(APP)} imports {module}"
        for path in (APP / "core").rglob("*.py")
        for module in _imports(path)
        if module.split(".")[:2] in (["app", d] for d in DOMAINS)
    )
    assert offenders == []


def test_no_request_code_looks_services_up_in_app_state() -> None:
    offenders = sorted(
        str(path.relative_to(APP)) for path in APP.rglob("*.py") if "app.state" in path.read_text()
    )
    assert offenders == []


def test_settings_groups_are_read_once_not_per_request() -> None:
    """Only `Settings` builds its nested groups; nothing else reads them from the
    environment (as a request handler once did)."""
    offenders = sorted(
        str(path.relative_to(APP))
        for path in APP.rglob("*.py")
        if "NotificationSettings()" in path.read_text() and path.name != "settings.py"
    )
    assert offenders == []


def test_each_dependency_is_defined_once() -> None:
    """No twins: the functions lean routes and FastAPI call are the same ones."""
    for twin in ("authenticate", "admin_of", "transaction_for", "get_current_user", "get_admin"):
        assert not hasattr(deps, twin), twin
    assert not (APP / "auth" / "deps.py").exists()
