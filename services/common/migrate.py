"""Alembic migrations, applied when a service starts.

Each service keeps its scripts in `services/<name>/migrations`; its `env.py`
just calls `run_env(metadata)`. On PostgreSQL an advisory lock makes replicas
that start together apply the migrations one at a time.
"""

from __future__ import annotations

import asyncio
import sqlite3
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from alembic import command, context
from alembic.config import Config
from sqlalchemy import Connection, MetaData, text
from sqlalchemy.exc import OperationalError

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

    if db.is_sqlite:
        await _upgrade_sqlite(db, run)
        return
    async with db.engine.connect() as connection:
        lock_key = zlib.crc32(f"shop-migrations-{lock_name}".encode())
        await connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": lock_key})
        await connection.run_sync(run)
        await connection.commit()


# How long a starting process waits for another one migrating the same SQLite file.
SQLITE_MIGRATION_WAIT = 60.0


async def _upgrade_sqlite(db: Database, run: Callable[[Connection], None]) -> None:
    """Every pending migration in one transaction begun IMMEDIATE: SQLite's DDL is
    transactional, so a migration that fails half-way leaves the file as it was, and
    processes starting together on one file take turns (the write lock is waited for
    asynchronously; the one that comes second finds nothing left to do)."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + SQLITE_MIGRATION_WAIT
    pause = 0.01
    while True:
        try:
            async with db.engine.connect() as connection:
                await connection.execution_options(sqlite_begin="IMMEDIATE")
                await connection.begin()
                await connection.run_sync(run)
                await connection.commit()
            return
        except OperationalError as error:
            locked = getattr(error.orig, "sqlite_errorcode", None) == sqlite3.SQLITE_BUSY
            if not locked or loop.time() > give_up:
                raise
        await asyncio.sleep(pause)
        pause = min(pause * 2, 0.2)


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
