"""The database of one service: an async SQLAlchemy engine chosen by URL.

SQLite (the embedded default) gets WAL, a busy timeout and foreign keys; its calls
run inline on the event loop (`services.common.inline_sqlite`: a SQLite call takes
microseconds, the hop to aiosqlite's thread took longer), reads skip BEGIN
(autocommit) and the process's writers take turns, each transaction starting with
BEGIN IMMEDIATE. PostgreSQL (asyncpg) runs the same models and queries unchanged.

Point reads on a hot path (`read_one`) skip the ORM session and the engine: one Core
select compiled once, run on a plain `sqlite3` connection or an asyncpg pool of their
own (`services.common.point_reads`).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import sqlite3
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import MetaData, Select, Table, event, text
from sqlalchemy.dialects import postgresql as postgresql_dml
from sqlalchemy.dialects import sqlite as sqlite_dml
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase, configure_mappers
from sqlalchemy.sql.elements import ClauseElement

from services.common import inline_sqlite, telemetry
from services.common.point_reads import (
    CONNECTION_LOST,
    SQLITE,
    Compiled,
    PostgresPointReader,
    SqlitePointReader,
)
from services.common.transactions import (
    NO_PARAMETERS,
    EngineTransaction,
    PostgresTransaction,
    SqliteTransaction,
    Transaction,
    committed,
    sqlite_committed,
)

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

INLINE_BUSY_TIMEOUT_MS = 10
# How long a write waits, in all, for another process's write lock on the file.
SQLITE_LOCK_WAIT = 5.0

SQLITE_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=NORMAL",
    # SQLite's own wait for a lock another process holds runs on the event loop's thread
    # (the calls are inline): keep it short, and wait longer asynchronously (write()).
    f"PRAGMA busy_timeout={INLINE_BUSY_TIMEOUT_MS}",
    "PRAGMA foreign_keys=ON",
)


class Base(DeclarativeBase):
    """Each service declares its own subclass, so each has its own metadata."""

    __abstract__ = True


def new_metadata() -> MetaData:
    return MetaData(naming_convention=NAMING_CONVENTION)


def _configure_sqlite(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take BEGIN away from the driver: SQLAlchemy's "begin" event emits it.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        for pragma in SQLITE_PRAGMAS:
            cursor.execute(pragma)
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def on_begin(connection: Any) -> None:
        # Writes begin IMMEDIATE. Reads run in autocommit (each statement is its own
        # snapshot): no BEGIN, so a read costs one trip to the driver's thread, not two.
        mode = connection.get_execution_options().get("sqlite_begin")
        if mode is not None:
            connection.exec_driver_sql(f"BEGIN {mode}")


# One turn per SQLite file in the process (two Database objects on one file, as tests
# of replicas make, share it): SQLite has one writer at a time, and a writer that met
# the file lock would wait inline, holding the event loop the other one needs.
_writer_turns: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, asyncio.Lock]] = (
    weakref.WeakKeyDictionary()
)


# The SQLite files this task is writing, to refuse a nested write (see write()).
_writing: contextvars.ContextVar[frozenset[str]] = contextvars.ContextVar(
    "shop_sqlite_writing", default=frozenset()
)


async def _once_unlocked(attempt: Callable[[], Awaitable[Result]]) -> Result:
    """`attempt` (a BEGIN IMMEDIATE) again, after a growing pause, while another process
    holds the file's write lock (SQLITE_BUSY), up to SQLITE_LOCK_WAIT in all; the loop
    goes on meanwhile."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + SQLITE_LOCK_WAIT
    pause = 0.002
    while True:
        try:
            return await attempt()
        except (OperationalError, sqlite3.OperationalError) as error:
            cause = getattr(error, "orig", None) or error
            busy = getattr(cause, "sqlite_errorcode", None) == sqlite3.SQLITE_BUSY
            if not busy or loop.time() > give_up:
                raise
        await asyncio.sleep(pause)
        pause = min(pause * 2, 0.05)


def _writer_turn(path: str) -> asyncio.Lock:
    turns = _writer_turns.setdefault(asyncio.get_running_loop(), {})
    return turns.setdefault(path, asyncio.Lock())


# A point read that meets a lock (a WAL checkpoint, rarely) waits this long at most,
# holding the event loop; then it fails like any other database error.
POINT_READ_BUSY_TIMEOUT_MS = 200


def create_engine(url: str) -> AsyncEngine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(
            url,
            pool_size=8,
            max_overflow=8,
            async_creator=inline_sqlite.creator(parsed.database or ":memory:"),
        )
        _configure_sqlite(engine)
        return engine
    return create_async_engine(url, pool_size=10, max_overflow=10, pool_pre_ping=True)


Model = TypeVar("Model", bound=DeclarativeBase)
Result = TypeVar("Result")


def loaded(model: type[Model], row: Mapping[str, Any]) -> Model:
    """An instance of a mapped class holding `row`'s values, made as the ORM's own loader
    makes one (a new instance state, the values set without attribute events): a
    third of the cost of `model(**row)`, which a point read on a hot path would feel."""
    mapper = model.__mapper__
    if not mapper.configured:  # in a fresh process nothing has configured them yet
        configure_mappers()
    instance: Model = mapper.class_manager.new_instance()
    instance.__dict__.update(row)
    return instance


class Database:
    """One service's database: ORM sessions for reads and writes (a unit of work: commit
    on success, rollback on error), and the driver paths of the hot ones (point reads,
    `transaction`, `write_one`)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = create_engine(url)
        telemetry.trace_database(self.engine.sync_engine)
        self.is_sqlite = self.engine.dialect.name == "sqlite"
        writer = (
            self.engine.execution_options(sqlite_begin="IMMEDIATE")
            if self.is_sqlite
            else self.engine
        )
        self._read = async_sessionmaker(self.engine, expire_on_commit=False)
        self._write = async_sessionmaker(writer, expire_on_commit=False)
        database = make_url(url).database
        self._sqlite_file = (
            str(Path(database).resolve())
            if self.is_sqlite and database and database != ":memory:"
            else None
        )
        self._point_reader = (
            None
            if self._sqlite_file is None
            else SqlitePointReader(self._sqlite_file, POINT_READ_BUSY_TIMEOUT_MS)
        )
        self._pg_point_reader = (
            PostgresPointReader(self.engine) if self.engine.dialect.name == "postgresql" else None
        )
        self._sqlite_writer: sqlite3.Connection | None = None
        self._sqlite_compiled = Compiled(SQLITE)

    def insert(self, table: Table) -> sqlite_dml.Insert | postgresql_dml.Insert:
        """An INSERT into `table` in this engine's dialect, so it takes ON CONFLICT
        clauses (do nothing, do update ... where) the same way on SQLite and PostgreSQL."""
        return sqlite_dml.insert(table) if self.is_sqlite else postgresql_dml.insert(table)

    async def read_one(
        self, statement: Select[Any], params: Mapping[str, Any]
    ) -> Mapping[str, Any] | None:
        """The first row of a Core select (a point read) as a mapping, or None. Build the
        statement once, with bind parameters: it is then compiled once."""
        if self._point_reader is not None:
            return self._point_reader.read_one(statement, params)
        if self._pg_point_reader is not None:
            return await self._pg_point_reader.read_one(statement, params)
        async with self.engine.connect() as connection:
            row = (await connection.execute(statement, params)).mappings().first()
            return None if row is None else dict(row)

    async def read_all(
        self, statement: Select[Any], params: Mapping[str, Any]
    ) -> list[dict[str, Any]]:
        """Every row of a Core select, as mappings, on the point readers' path (a short
        scan on a hot path: a relay pass, a page of the feed)."""
        if self._point_reader is not None:
            return self._point_reader.read_all(statement, params)
        if self._pg_point_reader is not None:
            return await self._pg_point_reader.read_all(statement, params)
        async with self.engine.connect() as connection:
            return [dict(row) for row in (await connection.execute(statement, params)).mappings()]

    async def read_model(
        self, model: type[Model], statement: Select[Any], params: Mapping[str, Any]
    ) -> Model | None:
        """`read_one` of a mapped class's own table, as an instance of that class (not
        in any session), or None."""
        row = await self.read_one(statement, params)
        return None if row is None else loaded(model, row)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        """A write transaction of Core statements on the driver itself, for the hot
        writes (`services.common.transactions`): committed when the block ends, rolled
        back when it raises. On SQLite it takes the process's writer turn, as `write`."""
        if self._pg_point_reader is not None:
            async with self._pg_point_reader.begin() as connection:
                try:
                    yield PostgresTransaction(connection, self._pg_point_reader.compiled)
                    await committed(connection.execute("COMMIT"))
                except BaseException:
                    # A connection a cancelled statement left busy cannot roll back: the
                    # pool's connection is then closed instead (`begin`), which does.
                    with contextlib.suppress(Exception):
                        await connection.execute("ROLLBACK")
                    raise
            return
        if self._sqlite_file is None:
            async with self.engine.begin() as engine_connection:
                yield EngineTransaction(engine_connection)
            return
        async with self._sqlite_turn():
            connection = await self._sqlite_begin()
            try:
                yield SqliteTransaction(connection, self._sqlite_compiled)
                sqlite_committed(connection)
            except BaseException:
                # Also when COMMIT itself failed (a deferred constraint, a full disk): the
                # write connection is never left holding the file's write lock.
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
                raise

    async def write_one(
        self, statement: ClauseElement, params: Mapping[str, Any] = NO_PARAMETERS
    ) -> int:
        """One insert, update or delete as a transaction of its own; how many rows it
        changed. On PostgreSQL it runs in autocommit: one round trip, where BEGIN and
        COMMIT add two. A connection the server dropped (a restart) is replaced and the
        statement sent again: it may have committed the first time, so use this for
        statements whose repeat changes nothing and tells the caller so (a conditional
        update whose outcome the caller reads back, an insert of a unique key:
        IntegrityError, "there already")."""
        if self._pg_point_reader is None:
            async with self.transaction() as tx:
                return await tx.execute(statement, params)
        return await self._pg_once(
            lambda statements: statements.execute(statement, params), resend=True
        )

    async def write_returning(
        self, statement: ClauseElement, params: Mapping[str, Any] = NO_PARAMETERS
    ) -> dict[str, Any] | None:
        """`write_one` of a statement with RETURNING: its first row, or None. Never sent
        twice (a repeat of a conditional update that had committed would answer None,
        which is not what happened): a connection lost on the way raises."""
        if self._pg_point_reader is None:
            async with self.transaction() as tx:
                return await tx.fetch_one(statement, params)
        return await self._pg_once(
            lambda statements: statements.fetch_one(statement, params), resend=False
        )

    async def _pg_once(
        self, run: Callable[[PostgresTransaction], Awaitable[Result]], *, resend: bool
    ) -> Result:
        """`run` on an autocommit connection of the write pool; with `resend`, once more
        on a fresh connection if the server had dropped the first."""
        reader = self._pg_point_reader
        assert reader is not None
        for attempt in range(2 if resend else 1):
            try:
                async with reader.autocommit() as connection:
                    return await run(PostgresTransaction(connection, reader.compiled))
            except CONNECTION_LOST:
                await reader.expire_writers()  # most likely all dropped (a restart)
                if attempt or not resend:
                    raise
        raise AssertionError("unreachable")

    @asynccontextmanager
    async def advisory_lock(self, key: int) -> AsyncIterator[None]:
        """On PostgreSQL, the session-level advisory lock `key` for the block (replicas
        take turns); elsewhere nothing (one process writes a SQLite file's feed). One
        round trip to take it and one to give it back, on a write-pool connection; a
        connection whose lock may not have been given back (cancelled, cut off) is
        closed, which gives it back."""
        reader = self._pg_point_reader
        if reader is None:
            yield
            return
        async with reader.autocommit() as connection:
            try:
                await connection.execute("SELECT pg_advisory_lock($1)", key)
            except BaseException:
                connection.terminate()  # it may be granted after all
                raise
            try:
                yield
            finally:
                try:
                    await connection.execute("SELECT pg_advisory_unlock($1)", key)
                except BaseException:
                    connection.terminate()
                    raise

    @asynccontextmanager
    async def _sqlite_turn(self) -> AsyncIterator[None]:
        """The process's turn to write the SQLite file (see `write`)."""
        assert self._sqlite_file is not None
        if self._sqlite_file in _writing.get():
            raise RuntimeError(
                "a write inside a write on the same SQLite file would wait for its own turn "
                "for ever: use the session of the outer write"
            )
        async with _writer_turn(self._sqlite_file):
            writing = _writing.set(_writing.get() | {self._sqlite_file})
            try:
                yield
            finally:
                _writing.reset(writing)

    async def _sqlite_begin(self) -> sqlite3.Connection:
        """The write connection with BEGIN IMMEDIATE gone through (another process's
        write lock waited for, `_once_unlocked`)."""
        assert self._sqlite_file is not None
        if self._sqlite_writer is None:
            connection = sqlite3.connect(
                self._sqlite_file, isolation_level=None, check_same_thread=False
            )
            for pragma in SQLITE_PRAGMAS:
                connection.execute(pragma)
            self._sqlite_writer = connection
        writer = self._sqlite_writer

        async def begin() -> sqlite3.Connection:
            writer.execute("BEGIN IMMEDIATE")
            return writer

        return await _once_unlocked(begin)

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        async with self._read() as session:
            yield session

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncSession]:
        if self._sqlite_file is None:
            async with self._write() as session, session.begin():
                yield session
            return
        # SQLite has one writer at a time: the process's writers take turns here, in
        # order, instead of meeting the file lock (whose busy handler sleeps and polls,
        # up to 100 ms a try, and would hold the event loop while it does).
        async with self._sqlite_turn():
            session = await self._sqlite_write_session()
            try:
                yield session
            except BaseException:
                await session.rollback()
                raise
            else:
                await session.commit()
            finally:
                await session.close()

    async def _sqlite_write_session(self) -> AsyncSession:
        """A session whose BEGIN IMMEDIATE went through. Another process holding the
        file's write lock (a second replica on the file, a sqlite3 shell) is waited for
        here, asynchronously, up to SQLITE_LOCK_WAIT; the loop goes on meanwhile."""

        async def begin() -> AsyncSession:
            session = self._write()
            try:
                await session.connection()  # checks a connection out: BEGIN IMMEDIATE
            except BaseException:
                await session.close()
                raise
            return session

        return await _once_unlocked(begin)

    async def ping(self) -> None:
        """Raises if the database cannot answer a trivial query."""
        async with self.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))

    def connections_in_use(self) -> int:
        """Connections checked out now, of the engine's pool and the driver paths' own
        (for the metrics)."""
        engine = int(getattr(self.engine.pool, "checkedout", lambda: 0)())
        if self._pg_point_reader is not None:
            return engine + self._pg_point_reader.connections_in_use()
        writing = self._sqlite_writer is not None and self._sqlite_writer.in_transaction
        return engine + int(writing)

    async def close(self) -> None:
        if self._point_reader is not None:
            self._point_reader.close()
        if self._sqlite_writer is not None:
            self._sqlite_writer.close()
            self._sqlite_writer = None
        if self._pg_point_reader is not None:
            await self._pg_point_reader.close()
        await self.engine.dispose()
