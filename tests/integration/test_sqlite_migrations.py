"""Migrations on SQLite are one transaction: a migration that fails half-way leaves the
file as it was, and the next start applies them all; two starts at once both end
with the schema, applied once."""

from __future__ import annotations

import asyncio
import textwrap
from pathlib import Path

import pytest
from sqlalchemy import inspect, text

from services.common import migrate
from services.common.db import Database

ENV = """
from alembic import context
from services.common.migrate import run_env
from sqlalchemy import MetaData

run_env(MetaData())
"""

FIRST = """
import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None


def upgrade():
    op.create_table("kept", sa.Column("id", sa.String(8), primary_key=True))
    op.execute("INSERT INTO kept (id) VALUES ('a')")
"""

SECOND = """
import os

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"


def upgrade():
    op.create_table("half", sa.Column("id", sa.String(8), primary_key=True))
    op.add_column("kept", sa.Column("note", sa.String(20)))
    if os.environ.get("FAIL_MIGRATION") == "1":
        raise RuntimeError("the migration breaks half-way")
"""


def scripts(tmp_path: Path) -> Path:
    location = tmp_path / "migrations"
    (location / "versions").mkdir(parents=True)
    (location / "env.py").write_text(textwrap.dedent(ENV))
    (location / "versions" / "0001_kept.py").write_text(textwrap.dedent(FIRST))
    (location / "versions" / "0002_half.py").write_text(textwrap.dedent(SECOND))
    return location


async def schema(db: Database) -> tuple[set[str], set[str], list[str]]:
    async with db.engine.connect() as connection:

        def read(sync: object) -> tuple[set[str], set[str]]:
            inspector = inspect(sync)
            tables = set(inspector.get_table_names())
            columns = (
                {c["name"] for c in inspector.get_columns("kept")} if "kept" in tables else set()
            )
            return tables, columns

        tables, columns = await connection.run_sync(read)
        versions = []
        if "alembic_version" in tables:
            rows = await connection.execute(text("SELECT version_num FROM alembic_version"))
            versions = [row[0] for row in rows]
    return tables, columns, versions


async def test_a_failed_migration_leaves_the_file_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    location = scripts(tmp_path)
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'app.db'}")
    try:
        monkeypatch.setenv("FAIL_MIGRATION", "1")
        with pytest.raises(RuntimeError, match="half-way"):
            await migrate.upgrade(db, location, "app")
        # Not even the first revision, nor the half-made table and column, is left.
        assert await schema(db) == (set(), set(), [])
        monkeypatch.setenv("FAIL_MIGRATION", "0")
        await migrate.upgrade(db, location, "app")
        tables, columns, versions = await schema(db)
        assert {"kept", "half", "alembic_version"} <= tables
        assert columns == {"id", "note"} and versions == ["0002"]
    finally:
        await db.close()


async def test_processes_starting_together_migrate_once(tmp_path: Path) -> None:
    location = scripts(tmp_path)
    url = f"sqlite+aiosqlite:///{tmp_path / 'app.db'}"
    # Separate Database objects on one file, as replicas in separate processes have;
    # their migrations meet SQLite's file lock, not the process's writer turns.
    databases = [Database(url) for _ in range(3)]
    try:
        await asyncio.gather(*(migrate.upgrade(db, location, "app") for db in databases))
        _, columns, versions = await schema(databases[0])
        assert versions == ["0002"] and columns == {"id", "note"}
        async with databases[0].engine.connect() as connection:
            rows = (await connection.execute(text("SELECT id FROM kept"))).all()
        assert [row[0] for row in rows] == ["a"]  # the data step ran once
    finally:
        for db in databases:
            await db.close()
