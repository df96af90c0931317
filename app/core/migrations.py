"""Run Alembic programmatically (launcher, tests) and report whether the schema is at head."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy.ext.asyncio import AsyncConnection

ROOT = Path(__file__).resolve().parents[2]


def alembic_config(url: str) -> Config:
    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.set_main_option("script_location", str(ROOT / "alembic"))
    cfg.attributes["database_url"] = url
    return cfg


def upgrade_to_head(url: str) -> None:
    """Blocking; call from a thread when an event loop is running."""
    command.upgrade(alembic_config(url), "heads")


def head_revisions() -> set[str]:
    script = ScriptDirectory.from_config(alembic_config("postgresql://unused"))
    return set(script.get_heads())


async def current_revisions(conn: AsyncConnection) -> set[str]:
    from sqlalchemy import text

    rows = await conn.execute(text("SELECT version_num FROM alembic_version"))
    return {r[0] for r in rows}
