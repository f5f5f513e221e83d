"""Write transactions on the driver itself (`Database.transaction`): what they write reads
back exactly as the engine writes it (datetimes, booleans, big integers, JSON, NULLs);
they commit together or not at all; a duplicate key is SQLAlchemy's IntegrityError on
every driver; constants in a statement need no parameter; RETURNING comes back
converted; and on SQLite they take the same writer turn as ORM writes."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    bindparam,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.exc import IntegrityError

from services.common.db import Database
from services.common.times import as_utc
from tests.conftest import postgres_database

METADATA = MetaData()
PARENTS = Table("parents", METADATA, Column("id", String(16), primary_key=True))
# Checked at COMMIT only.
CHILDREN = Table(
    "children",
    METADATA,
    Column("id", String(16), primary_key=True),
    Column(
        "parent_id",
        String(16),
        ForeignKey("parents.id", deferrable=True, initially="DEFERRED"),
        nullable=False,
    ),
)
THINGS = Table(
    "things",
    METADATA,
    Column("id", String(16), primary_key=True),
    Column("state", String(16), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("active", Boolean, nullable=False),
    Column("seen", DateTime(timezone=True)),
    Column("tags", JSON),
    Column("count", Integer),
)
INSERT = insert(THINGS)
BY_ID = select(THINGS).where(THINGS.c.id == bindparam("id"))
# A constant in the condition ("NEW"), parameters by name, the row back.
START = (
    update(THINGS)
    .where(THINGS.c.id == bindparam("id"), THINGS.c.state == "NEW")
    .values(state="STARTED", size=THINGS.c.size + bindparam("more"))
    .returning(THINGS)
)
SEEN = datetime(2026, 11, 26, 12, 30, 15, 123456, tzinfo=UTC)
ROW = {
    "id": "a",
    "state": "NEW",
    "size": 2**40,
    "active": True,
    "seen": SEEN,
    "tags": {"colour": "blue", "sizes": [1, 2]},
    "count": None,
}


async def _database(url: str) -> Database:
    db = Database(url)
    async with db.engine.begin() as connection:
        await connection.run_sync(METADATA.create_all)
    return db


async def test_a_transaction_writes_what_the_engine_reads_back(database_url: str) -> None:
    db = await _database(database_url)
    try:
        async with db.transaction() as tx:
            assert await tx.execute(INSERT, ROW) == 1
            await tx.execute_many(INSERT, [{**ROW, "id": "b"}, {**ROW, "id": "c", "seen": None}])
        async with db.engine.connect() as connection:
            rows = {
                row["id"]: dict(row)
                for row in (await connection.execute(select(THINGS))).mappings()
            }
        assert set(rows) == {"a", "b", "c"}
        assert rows["a"]["size"] == 2**40 and rows["a"]["active"] is True
        assert as_utc(rows["a"]["seen"]) == SEEN
        assert rows["a"]["tags"] == {"colour": "blue", "sizes": [1, 2]}
        assert rows["a"]["count"] is None and rows["c"]["seen"] is None

        async with db.transaction() as tx:
            started = await tx.fetch_one(START, {"id": "a", "more": 2})
            again = await tx.fetch_one(START, {"id": "a", "more": 2})
            assert (
                await tx.execute(update(THINGS).where(THINGS.c.state == "NEW").values(count=7)) == 2
            )
            everything = await tx.fetch_all(select(THINGS.c.id).order_by(THINGS.c.id))
        assert started is not None and again is None  # the constant "NEW" held
        assert started["state"] == "STARTED" and started["size"] == 2**40 + 2
        assert as_utc(started["seen"]) == SEEN and started["tags"]["colour"] == "blue"
        assert everything == [{"id": "a"}, {"id": "b"}, {"id": "c"}]
        assert (await db.read_one(BY_ID, {"id": "b"}) or {})["count"] == 7
    finally:
        await db.close()


async def test_a_failed_transaction_writes_nothing(database_url: str) -> None:
    db = await _database(database_url)
    try:
        async with db.transaction() as tx:
            await tx.execute(INSERT, ROW)
        with pytest.raises(IntegrityError):
            async with db.transaction() as tx:
                await tx.execute(INSERT, {**ROW, "id": "new"})
                await tx.execute(INSERT, ROW)  # the same id again
        with pytest.raises(IntegrityError):
            async with db.transaction() as tx:
                await tx.execute_many(INSERT, [{**ROW, "id": "x"}, {**ROW, "id": "x"}])
        with pytest.raises(RuntimeError, match="boom"):
            async with db.transaction() as tx:
                await tx.execute(update(THINGS).values(state="GONE"))
                raise RuntimeError("boom")
        assert await db.read_one(BY_ID, {"id": "new"}) is None
        assert await db.read_one(BY_ID, {"id": "x"}) is None
        assert (await db.read_one(BY_ID, {"id": "a"}) or {})["state"] == "NEW"
        # The connection is usable after each failure.
        async with db.transaction() as tx:
            assert await tx.execute(INSERT, {**ROW, "id": "after"}) == 1
        assert await db.read_one(BY_ID, {"id": "after"}) is not None
    finally:
        await db.close()


async def test_a_cancelled_transaction_writes_nothing_and_frees_its_connection(
    database_url: str,
) -> None:
    db = await _database(database_url)
    gate = asyncio.Event()

    async def held() -> None:
        async with db.transaction() as tx:
            await tx.execute(INSERT, ROW)
            gate.set()
            await asyncio.sleep(30)

    try:
        task = asyncio.create_task(held())
        await gate.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await db.read_one(BY_ID, {"id": "a"}) is None
        for n in range(10):  # more than the pool holds: none was left inside a transaction
            async with asyncio.timeout(5):
                async with db.transaction() as tx:
                    await tx.execute(INSERT, {**ROW, "id": f"n{n}"})
        assert await db.read_one(BY_ID, {"id": "n9"}) is not None
    finally:
        await db.close()


async def test_sqlite_transactions_and_orm_writes_take_turns(tmp_path: Path) -> None:
    db = await _database(f"sqlite+aiosqlite:///{tmp_path / 'turns.db'}")
    try:

        async def bump_in_transaction() -> None:
            async with db.transaction() as tx:
                row = await tx.fetch_one(select(THINGS.c.size).where(THINGS.c.id == "a"))
                assert row is not None
                await asyncio.sleep(0)  # another writer would get in here without turns
                await tx.execute(
                    update(THINGS).where(THINGS.c.id == "a").values(size=row["size"] + 1)
                )

        async def bump_in_session() -> None:
            async with db.write() as session:
                size = int(
                    await session.scalar(select(THINGS.c.size).where(THINGS.c.id == "a")) or 0
                )
                await asyncio.sleep(0)
                await session.execute(
                    update(THINGS).where(THINGS.c.id == "a").values(size=size + 1)
                )

        async with db.transaction() as tx:
            await tx.execute(INSERT, {**ROW, "size": 0})
        await asyncio.gather(
            *(bump_in_transaction() for _ in range(20)), *(bump_in_session() for _ in range(20))
        )
        assert (await db.read_one(BY_ID, {"id": "a"}) or {})["size"] == 40
        with pytest.raises(RuntimeError, match="inside a write"):
            async with db.transaction(), db.write():
                pass
    finally:
        await db.close()


async def test_a_single_write_commits_by_itself(database_url: str) -> None:
    """write_one / write_returning: the row count, the row RETURNed (converted), a
    duplicate key as IntegrityError, nothing written by a statement that matched
    nothing."""
    db = await _database(database_url)
    try:
        assert await db.write_one(INSERT, ROW) == 1
        with pytest.raises(IntegrityError):
            await db.write_one(INSERT, ROW)
        started = await db.write_returning(START, {"id": "a", "more": 5})
        assert started is not None and started["size"] == 2**40 + 5
        assert as_utc(started["seen"]) == SEEN and started["tags"] == ROW["tags"]
        assert await db.write_returning(START, {"id": "a", "more": 5}) is None
        assert await db.write_one(update(THINGS).where(THINGS.c.id == "none").values(count=1)) == 0
        stored = await db.read_one(BY_ID, {"id": "a"})
        assert stored is not None and stored["state"] == "STARTED"
        assert stored["size"] == 2**40 + 5
    finally:
        await db.close()


@pytest.mark.postgres
async def test_a_single_write_goes_through_after_the_server_dropped_its_connections() -> None:
    """PostgreSQL ends every session of the pool (as a restart does): the next write_one
    goes through (sent again on a fresh connection)."""
    async with postgres_database() as url:
        db = await _database(url)
        try:
            for n in range(3):  # a few connections in the write pool
                await db.write_one(INSERT, {**ROW, "id": f"w{n}"})
            name = url.rsplit("/", 1)[1]
            async with db.engine.connect() as connection:
                ended = await connection.execute(
                    text(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                        "WHERE datname = :name AND pid <> pg_backend_pid()"
                    ),
                    {"name": name},
                )
                assert ended.scalar_one() >= 1
            assert await db.write_one(INSERT, {**ROW, "id": "after"}) == 1
            assert await db.read_one(BY_ID, {"id": "after"}) is not None
        finally:
            await db.close()


async def test_a_commit_that_fails_rolls_back_and_frees_the_writer(database_url: str) -> None:
    """A constraint checked only at COMMIT (deferred) fails it: IntegrityError, nothing
    written, and the next transaction goes through (on SQLite the write connection was
    left inside the failed transaction, holding the file's write lock)."""
    db = await _database(database_url)
    try:
        with pytest.raises(IntegrityError):
            async with db.transaction() as tx:
                await tx.execute(insert(CHILDREN), {"id": "orphan", "parent_id": "none"})
                await tx.execute(INSERT, ROW)
        assert await db.read_one(BY_ID, {"id": "a"}) is None
        async with asyncio.timeout(10):
            async with db.transaction() as tx:
                await tx.execute(INSERT, ROW)
            async with db.write() as session:
                await session.execute(insert(PARENTS), {"id": "p"})
        assert await db.read_one(BY_ID, {"id": "a"}) is not None
    finally:
        await db.close()


async def test_a_parameter_named_like_a_constant_changes_nothing(database_url: str) -> None:
    """A constant's value is the statement's: a parameter that happens to have its
    generated name ("state", "state_1") does not replace it."""
    db = await _database(database_url)
    try:
        await db.write_one(INSERT, ROW)
        hostile = {"id": "a", "more": 1, "state": "HACKED", "state_1": "HACKED"}
        started = await db.write_returning(START, hostile)
        assert started is not None and started["state"] == "STARTED"
    finally:
        await db.close()


async def test_connections_in_use_count_the_driver_paths(database_url: str) -> None:
    """The metric's figure counts a transaction's connection while it is open."""
    db = await _database(database_url)
    try:
        await db.read_one(BY_ID, {"id": "a"})
        assert db.connections_in_use() == 0
        async with db.transaction() as tx:
            await tx.execute(INSERT, ROW)
            assert db.connections_in_use() == 1
        assert db.connections_in_use() == 0
    finally:
        await db.close()
