"""Alembic migrations, applied when a service starts.

Each service keeps its scripts in `services/<name>/migrations`; its `env.py`
just calls `run_env(metadata)`. On PostgreSQL an advisory lock makes replicas
that start together apply the migrations one at a time.
"""

from __future__ import annotations

import asyncio
import zlib
from pathlib import Path
from typing import Any

from alembic import command, context
from alembic.config import Config
from sqlalchemy import Connection, MetaData, text

from services.common.db import Database


def alembic_config(script_location: Path, connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(script_location))
    config.attributes["connection"] = connection
    return config


async def upgrade(db: Database, script_location: Path, lock_name: str) -> None:
    """Brings the schema to the newest revision (a no-op when it is there already)."""

    def run(connection: Connection) -> None:
        command.upgrade(alembic_config(script_location, connection), "head")

    async with db.engine.connect() as connection:
        if not db.is_sqlite:
            lock_key = zlib.crc32(f"shop-migrations-{lock_name}".encode())
            await connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": lock_key})
        await connection.run_sync(run)
        await connection.commit()


def _configure_and_run(connection: Connection, metadata: MetaData) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=True,  # SQLite alters tables by copying them
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_env(metadata: MetaData) -> None:
    """The body of every service's env.py.

    At service start the connection comes from `upgrade`; from the alembic
    command line (`alembic -x url=... revision --autogenerate`) it is opened here.
    """
    connection: Any = context.config.attributes.get("connection")
    if connection is not None:
        _configure_and_run(connection, metadata)
        return
    url = context.get_x_argument(as_dictionary=True).get("url")
    if not url:
        raise SystemExit("pass the database URL: alembic -x url=sqlite+aiosqlite:///... <command>")

    async def run_from_cli() -> None:
        db = Database(url)
        try:
            async with db.engine.connect() as conn:
                await conn.run_sync(_configure_and_run, metadata)
                await conn.commit()
        finally:
            await db.close()

    asyncio.run(run_from_cli())
