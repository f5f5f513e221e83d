"""Point reads without SQLAlchemy's execution path: the hottest reads of the mesh (every
GetProduct, every caller's user check, every payment lookup) as one statement on the
driver itself.

A Core `select` is compiled once per dialect (SQL text, parameter order, and the
converters SQLAlchemy itself would apply to parameters and columns, so a row reads back
exactly as through the engine). Then:

- SQLite: one `execute` and one `fetchone` on a read-only `sqlite3` connection of the
  reader's own, inline on the event loop. In WAL mode a reader never waits for a
  writer, and a read takes microseconds, less than any hand-off would.
- PostgreSQL: one `fetchrow` on an asyncpg pool of the reader's own, in autocommit:
  one round trip (asyncpg prepares and caches the statement), where a pooled
  SQLAlchemy connection costs four (the pre-ping, BEGIN, the SELECT, ROLLBACK).

Profiled on GetProduct: the engine path was 21% of the CPU on SQLite, the cursor about
3%. A span is made here only when the current trace is being recorded.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, cast

import asyncpg
from opentelemetry import trace
from sqlalchemy import Select
from sqlalchemy.dialects.postgresql import asyncpg as postgresql_asyncpg
from sqlalchemy.dialects.sqlite import pysqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import InvalidRequestError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ClauseElement
from sqlalchemy.types import TypeEngine

SQLITE = pysqlite.dialect()
POSTGRESQL = postgresql_asyncpg.dialect()  # type: ignore[no-untyped-call]
_tracer = trace.get_tracer("shop.point_reads")

Converter = Callable[[Any], Any] | None


# What is not given for a parameter that has no value of its own.
_REQUIRED = object()


@dataclass(frozen=True)
class CompiledRead:
    """A statement (a select, or an insert, update or delete and what it RETURNs),
    compiled once for one dialect, for the driver paths (point reads, transactions).
    Its constants (`.where(t.c.state == "PENDING")`) are
    parameters with their own value; the others are named by `bindparam` or, for an
    insert of a whole table, by column key."""

    sql: str
    parameters: tuple[str, ...]
    constants: tuple[Any, ...]
    to_database: tuple[Converter, ...]
    keys: tuple[str, ...]
    from_database: tuple[Converter, ...]

    @classmethod
    def of(cls, statement: ClauseElement, dialect: Dialect) -> CompiledRead:
        compiled = cast(SQLCompiler, statement.compile(dialect=dialect))
        names = tuple(compiled.positiontup or ())
        binds = [compiled.binds[name] for name in names]
        columns = list(getattr(statement, "exported_columns", ()))
        return cls(
            sql=compiled.string,
            parameters=names,
            constants=tuple(
                _REQUIRED if bind.required or bind.callable else bind.value for bind in binds
            ),
            to_database=tuple(
                bind.type.dialect_impl(dialect).bind_processor(dialect) for bind in binds
            ),
            keys=tuple(str(column.key) for column in columns),
            from_database=tuple(_result_converter(column.type, dialect) for column in columns),
        )

    def arguments(self, params: Mapping[str, Any]) -> list[Any]:
        # A constant keeps its value whatever `params` holds (a key of the same name as
        # the constant's generated one must not change what the statement says).
        values = (
            params[name] if constant is _REQUIRED else constant
            for name, constant in zip(self.parameters, self.constants, strict=True)
        )
        return [
            value if convert is None else convert(value)
            for value, convert in zip(values, self.to_database, strict=True)
        ]

    def mapping(self, row: tuple[Any, ...] | asyncpg.Record) -> dict[str, Any]:
        return {
            key: value if convert is None else convert(value)
            for key, value, convert in zip(self.keys, row, self.from_database, strict=True)
        }


def _result_converter(kind: TypeEngine[Any], dialect: Dialect) -> Converter:
    """What SQLAlchemy applies to a column's values read through `dialect`. Some asyncpg
    converters depend on the type the server reports with the row, which a statement
    compiled ahead does not know: those types (numerics) come back from asyncpg as the
    engine returns them, so none is needed."""
    try:
        return kind.dialect_impl(dialect).result_processor(dialect, None)
    except (TypeError, InvalidRequestError):
        return None


class Compiled:
    """Compiled forms by statement, for one dialect. Keyed by identity (the statements
    are module constants); the statement is kept beside its form so its id is never
    reused by another."""

    def __init__(self, dialect: Dialect) -> None:
        self._dialect = dialect
        self._forms: dict[int, tuple[ClauseElement, CompiledRead]] = {}

    def __call__(self, statement: ClauseElement) -> CompiledRead:
        found = self._forms.get(id(statement))
        if found is None:
            found = (statement, CompiledRead.of(statement, self._dialect))
            self._forms[id(statement)] = found
        return found[1]


def _recording() -> bool:
    return trace.get_current_span().is_recording()


class SqlitePointReader:
    """One read-only connection to a SQLite file, for point reads on the event loop."""

    def __init__(self, path: str, busy_timeout_ms: int, tracer: trace.Tracer | None = None) -> None:
        self._path = path
        self._busy_timeout_ms = busy_timeout_ms
        self._tracer = tracer or _tracer
        self._connection: sqlite3.Connection | None = None
        self._compiled = Compiled(SQLITE)

    def _connect(self) -> sqlite3.Connection:
        if self._connection is None:
            # Autocommit (isolation_level None): no transaction is ever left open, so
            # each read sees the latest commit and never holds back a checkpoint.
            connection = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
            connection.execute(f"PRAGMA busy_timeout={self._busy_timeout_ms}")
            connection.execute("PRAGMA query_only=ON")
            self._connection = connection
        return self._connection

    def read_one(self, statement: Select[Any], params: Mapping[str, Any]) -> dict[str, Any] | None:
        rows = self.read_all(statement, params, one=True)
        return rows[0] if rows else None

    def read_all(
        self, statement: Select[Any], params: Mapping[str, Any], *, one: bool = False
    ) -> list[dict[str, Any]]:
        """Every row of the select (the first only, with `one`)."""
        compiled = self._compiled(statement)
        if _recording():
            with self._tracer.start_as_current_span(
                "SELECT", kind=trace.SpanKind.CLIENT, attributes={"db.system": "sqlite"}
            ) as span:
                span.set_attribute("db.statement", compiled.sql)
                return self._fetch(compiled, params, one)
        return self._fetch(compiled, params, one)

    def _fetch(
        self, compiled: CompiledRead, params: Mapping[str, Any], one: bool
    ) -> list[dict[str, Any]]:
        cursor = self._connect().execute(compiled.sql, compiled.arguments(params))
        try:
            rows = cursor.fetchmany(1) if one else cursor.fetchall()
        finally:
            cursor.close()
        return [compiled.mapping(row) for row in rows]

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


# Connections of a PostgreSQL point reader, for its point reads and, apart, for the
# service's hot write transactions (which may wait on a row lock: they never hold up a
# read): a few each, opened when first needed (the shared server's max_connections is
# counted across every process).
PG_READER_CONNECTIONS = 4
PG_WRITER_CONNECTIONS = 6
# A connection the server dropped (a restart, a failover) is met once; the read is
# then tried again on a fresh one.
CONNECTION_LOST = (
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.CannotConnectNowError,
    # What asyncpg raises when the server's goodbye arrives as a query starts.
    asyncpg.exceptions.InternalClientError,
    ConnectionError,
)


# Connection arguments SQLAlchemy's asyncpg dialect keeps for its own adapter.
_SQLALCHEMY_ONLY = ("prepared_statement_cache_size", "prepared_statement_name_func")


async def _no_reset(_: asyncpg.Connection) -> None:
    """What a released connection needs: nothing (a point read, a single write or a
    transaction ended by COMMIT or ROLLBACK leaves no session state; one left inside a
    transaction is closed instead), so no reset query, a round trip, per use."""


async def _json_codecs(connection: asyncpg.Connection) -> None:
    """JSON columns as the engine's connections read them: decoded (SQLAlchemy's
    converters expect that and write JSON as text)."""
    for kind in ("json", "jsonb"):
        await connection.set_type_codec(
            kind, encoder=str, decoder=json.loads, schema="pg_catalog", format="text"
        )


class PostgresPointReader:
    """asyncpg pools of its own: one for point reads in autocommit, one for the hot
    write transactions and single writes (`Database.transaction`, `write_one`)."""

    def __init__(self, engine: AsyncEngine, tracer: trace.Tracer | None = None) -> None:
        # The engine's own connection arguments (host, credentials, and what the URL's
        # query says: ssl, timeouts, ...), so both connect alike.
        _, arguments = engine.dialect.create_connect_args(engine.url)
        self._arguments = {k: v for k, v in arguments.items() if k not in _SQLALCHEMY_ONLY}
        self._tracer = tracer or _tracer
        self._pools: dict[bool, asyncpg.Pool] = {}
        self._opening = asyncio.Lock()
        self._compiled = Compiled(POSTGRESQL)

    async def _connected(self, writing: bool = False) -> asyncpg.Pool:
        """The pool for reads, or for write transactions."""
        pool = self._pools.get(writing)
        if pool is None:
            async with self._opening:
                pool = self._pools.get(writing)
                if pool is None:
                    pool = await asyncpg.create_pool(
                        min_size=0,
                        max_size=PG_WRITER_CONNECTIONS if writing else PG_READER_CONNECTIONS,
                        reset=_no_reset,
                        init=_json_codecs,
                        **self._arguments,
                    )
                    self._pools[writing] = pool
        return pool

    @asynccontextmanager
    async def begin(self) -> AsyncIterator[asyncpg.Connection]:
        """A connection of the pool with a transaction begun, for the caller to commit or
        roll back. A connection the server dropped fails at BEGIN, before anything was
        sent: it is replaced (with the others) and the next one tried."""
        for attempt in range(2):
            async with self.autocommit() as connection:
                try:
                    await connection.execute("BEGIN")
                except CONNECTION_LOST:
                    if attempt:
                        raise
                    await self.expire_writers()
                    continue
                yield connection
                return

    @asynccontextmanager
    async def autocommit(self) -> AsyncIterator[asyncpg.Connection]:
        """A connection of the write pool, outside any transaction: each statement
        commits by itself (one round trip, where BEGIN and COMMIT add two)."""
        pool = await self._connected(writing=True)
        async with pool.acquire() as connection:
            try:
                yield connection
            finally:
                # A transaction cut short (its task cancelled mid-statement) may leave
                # the connection inside it: never hand that on.
                if connection.is_in_transaction() or connection.is_closed():
                    connection.terminate()

    async def expire_writers(self) -> None:
        """Replaces the write pool's connections (the server dropped them)."""
        pool = self._pools.get(True)
        if pool is not None:
            await pool.expire_connections()

    def connections_in_use(self) -> int:
        return sum(pool.get_size() - pool.get_idle_size() for pool in self._pools.values())

    @property
    def compiled(self) -> Compiled:
        return self._compiled

    async def read_one(
        self, statement: Select[Any], params: Mapping[str, Any]
    ) -> dict[str, Any] | None:
        rows = await self.read_all(statement, params, one=True)
        return rows[0] if rows else None

    async def read_all(
        self, statement: Select[Any], params: Mapping[str, Any], *, one: bool = False
    ) -> list[dict[str, Any]]:
        """Every row of the select (the first only, with `one`)."""
        compiled = self._compiled(statement)
        if _recording():
            with self._tracer.start_as_current_span(
                "SELECT", kind=trace.SpanKind.CLIENT, attributes={"db.system": "postgresql"}
            ) as span:
                span.set_attribute("db.statement", compiled.sql)
                return await self._fetch(compiled, params, one)
        return await self._fetch(compiled, params, one)

    async def _fetch(
        self, compiled: CompiledRead, params: Mapping[str, Any], one: bool
    ) -> list[dict[str, Any]]:
        arguments = compiled.arguments(params)
        pool = await self._connected()
        try:
            rows = await self._rows(pool, compiled.sql, arguments, one)
        except CONNECTION_LOST:
            # The others were most likely dropped too (a restart): replace them all.
            await pool.expire_connections()
            rows = await self._rows(pool, compiled.sql, arguments, one)
        return [compiled.mapping(row) for row in rows]

    @staticmethod
    async def _rows(pool: asyncpg.Pool, sql: str, arguments: list[Any], one: bool) -> list[Any]:
        if one:
            row = await pool.fetchrow(sql, *arguments)
            return [] if row is None else [row]
        return list(await pool.fetch(sql, *arguments))

    async def close(self) -> None:
        pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            await pool.close()
