"""Alembic environment: async engine; URL from the caller or DATABASE_URL / the embedded server."""

from __future__ import annotations

import asyncio
import os

from alembic import context
from sqlalchemy import text
from sqlalchemy.engine import Connection

import app.models  # noqa: F401  (registers every table on the metadata)
from app.core.db import create_engine, sqlalchemy_url
from app.core.models import Base
from app.core.settings import Settings

config = context.config
target_metadata = Base.metadata


def database_url() -> str:
    url = config.attributes.get("database_url") or os.environ.get("DATABASE_URL")
    if not url:
        from app.core.embedded import start_embedded

        _, url = start_embedded(Settings().data_dir)
    return sqlalchemy_url(str(url))


def run_offline() -> None:
    context.configure(url=database_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def _run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata, compare_type=True)
    with context.begin_transaction():
        # One transaction for the whole upgrade, serialised across processes that start at
        # once (several API replicas): the second waits, then finds nothing left to do.
        connection.execute(text("SELECT pg_advisory_xact_lock(hashtextextended('alembic', 0))"))
        context.run_migrations()


async def run_online() -> None:
    engine = create_engine(Settings(), database_url(), pooled=False)
    async with engine.connect() as connection:
        await connection.run_sync(_run)
    await engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    asyncio.run(run_online())
