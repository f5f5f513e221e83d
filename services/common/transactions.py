"""Write transactions without the ORM: the hot writes of the mesh (claiming and placing
an order, reserving stock, recording a payment, storing a notification) as Core
statements compiled once per dialect, run on the driver itself.

Profiled on CreateOrder, the ORM's unit of work, its session and SQLAlchemy's execution
path were half the CPU of the order, product and payment services and 70% of the
notification service's; one statement here is the driver's own call and a tuple of
converters (`point_reads.CompiledRead`, the converters SQLAlchemy itself applies, so
values write and read back exactly as through the engine).

- SQLite: a write connection of the database's own, inline on the event loop, inside
  the process's writer turn (`Database.transaction`), BEGIN IMMEDIATE ... COMMIT.
- PostgreSQL: a connection of the point reader's asyncpg pool, BEGIN ... COMMIT.
- Anything else (an in-memory SQLite database): the engine, unchanged semantics.

A unique or foreign key violation is raised as SQLAlchemy's `IntegrityError`, whatever
the driver, so a repository catches one exception on every path. A span per statement
is made only when the current trace is recorded.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Mapping, Sequence
from typing import Any, Protocol, cast

import asyncpg
from opentelemetry import trace
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.base import Executable
from sqlalchemy.sql.elements import ClauseElement

from services.common.point_reads import Compiled, CompiledRead

_tracer = trace.get_tracer("shop.transactions")
NO_PARAMETERS: Mapping[str, Any] = {}
# The parameters of several rows (execute_many).
Rows = Sequence[Mapping[str, Any]]


class Transaction(Protocol):
    """Statements inside one database transaction (committed when the block ends well);
    the PostgreSQL form also runs single statements in autocommit (`Database.write_one`)."""

    async def execute(
        self, statement: ClauseElement, params: Mapping[str, Any] = NO_PARAMETERS
    ) -> int:
        """Runs an insert, update or delete; how many rows it changed."""
        ...

    async def execute_many(self, statement: ClauseElement, rows: Rows) -> None:
        """Runs the statement once per row of parameters (an insert of several rows)."""
        ...

    async def fetch_one(
        self, statement: ClauseElement, params: Mapping[str, Any] = NO_PARAMETERS
    ) -> dict[str, Any] | None:
        """The first row of a select, or of what an insert, update or delete RETURNs."""
        ...

    async def fetch_all(
        self, statement: ClauseElement, params: Mapping[str, Any] = NO_PARAMETERS
    ) -> list[dict[str, Any]]:
        """Every row of a select, or of what a statement RETURNs."""
        ...


def _span(compiled: CompiledRead, system: str) -> trace.Span | None:
    if not trace.get_current_span().is_recording():
        return None
    return _tracer.start_span(
        compiled.sql.split(" ", 1)[0],
        kind=trace.SpanKind.CLIENT,
        attributes={"db.system": system, "db.statement": compiled.sql},
    )


class SqliteTransaction:
    """Statements on a `sqlite3` connection whose BEGIN IMMEDIATE went through."""

    def __init__(self, connection: sqlite3.Connection, compiled: Compiled) -> None:
        self._connection = connection
        self._compiled = compiled

    def _run(self, statement: ClauseElement, params: Mapping[str, Any]) -> tuple[CompiledRead, Any]:
        compiled = self._compiled(statement)
        span = _span(compiled, "sqlite")
        try:
            return compiled, self._connection.execute(compiled.sql, compiled.arguments(params))
        except sqlite3.IntegrityError as error:
            raise IntegrityError(compiled.sql, None, error) from None
        finally:
            if span is not None:
                span.end()

    async def execute(
        self, statement: ClauseElement, params: Mapping[str, Any] = NO_PARAMETERS
    ) -> int:
        _, cursor = self._run(statement, params)
        try:
            return int(cursor.rowcount)
        finally:
            cursor.close()

    async def execute_many(self, statement: ClauseElement, rows: Rows) -> None:
        compiled = self._compiled(statement)
        try:
            self._connection.executemany(compiled.sql, [compiled.arguments(row) for row in rows])
        except sqlite3.IntegrityError as error:
            raise IntegrityError(compiled.sql, None, error) from None

    async def fetch_one(
        self, statement: ClauseElement, params: Mapping[str, Any] = NO_PARAMETERS
    ) -> dict[str, Any] | None:
        compiled, cursor = self._run(statement, params)
        try:
            row = cursor.fetchone()
            if row is not None:
                cursor.fetchall()  # a RETURNING statement is done once every row is read
        finally:
            cursor.close()
        return None if row is None else compiled.mapping(row)

    async def fetch_all(
        self, statement: ClauseElement, params: Mapping[str, Any] = NO_PARAMETERS
    ) -> list[dict[str, Any]]:
        compiled, cursor = self._run(statement, params)
        try:
            return [compiled.mapping(row) for row in cursor.fetchall()]
        finally:
            cursor.close()


def sqlite_committed(connection: sqlite3.Connection) -> None:
    """COMMIT, a constraint checked only then (deferred) failing as IntegrityError."""
    try:
        connection.execute("COMMIT")
    except sqlite3.IntegrityError as error:
        raise IntegrityError("COMMIT", None, error) from None


async def committed(commit: Awaitable[Any]) -> None:
    """An asyncpg COMMIT, a deferred constraint failing as IntegrityError."""
    try:
        await commit
    except asyncpg.IntegrityConstraintViolationError as error:
        raise IntegrityError("COMMIT", None, error) from None


def _changed(status: str) -> int:
    """The row count of a command status: "UPDATE 3", "INSERT 0 1", "DELETE 0"."""
    count = status.rsplit(" ", 1)[-1]
    return int(count) if count.isdigit() else 0


class _FirstOfAll:
    """`fetch_one` as the first row of `fetch_all` (drivers that read every row anyway)."""

    async def fetch_all(
        self, statement: ClauseElement, params: Mapping[str, Any] = NO_PARAMETERS
    ) -> list[dict[str, Any]]:
        raise NotImplementedError

    async def fetch_one(
        self, statement: ClauseElement, params: Mapping[str, Any] = NO_PARAMETERS
    ) -> dict[str, Any] | None:
        rows = await self.fetch_all(statement, params)
        return rows[0] if rows else None


class PostgresTransaction(_FirstOfAll):
    """Statements on an asyncpg connection with a transaction begun."""

    def __init__(self, connection: asyncpg.Connection, compiled: Compiled) -> None:
        self._connection = connection
        self._compiled = compiled

    async def execute(
        self, statement: ClauseElement, params: Mapping[str, Any] = NO_PARAMETERS
    ) -> int:
        compiled = self._compiled(statement)
        span = _span(compiled, "postgresql")
        try:
            status = await self._connection.execute(compiled.sql, *compiled.arguments(params))
            return _changed(status)
        except asyncpg.IntegrityConstraintViolationError as error:
            raise IntegrityError(compiled.sql, None, error) from None
        finally:
            if span is not None:
                span.end()

    async def execute_many(self, statement: ClauseElement, rows: Rows) -> None:
        compiled = self._compiled(statement)
        try:
            await self._connection.executemany(
                compiled.sql, [compiled.arguments(row) for row in rows]
            )
        except asyncpg.IntegrityConstraintViolationError as error:
            raise IntegrityError(compiled.sql, None, error) from None

    async def fetch_all(
        self, statement: ClauseElement, params: Mapping[str, Any] = NO_PARAMETERS
    ) -> list[dict[str, Any]]:
        compiled = self._compiled(statement)
        span = _span(compiled, "postgresql")
        try:
            rows = await self._connection.fetch(compiled.sql, *compiled.arguments(params))
        except asyncpg.IntegrityConstraintViolationError as error:
            raise IntegrityError(compiled.sql, None, error) from None
        finally:
            if span is not None:
                span.end()
        return [compiled.mapping(row) for row in rows]


class EngineTransaction(_FirstOfAll):
    """Statements on a SQLAlchemy connection in a transaction (what has no driver path
    of its own: an in-memory SQLite database)."""

    def __init__(self, connection: AsyncConnection) -> None:
        self._connection = connection

    async def execute(
        self, statement: ClauseElement, params: Mapping[str, Any] = NO_PARAMETERS
    ) -> int:
        result = await self._connection.execute(cast(Executable, statement), dict(params))
        return int(getattr(result, "rowcount", 0))

    async def execute_many(self, statement: ClauseElement, rows: Rows) -> None:
        for row in rows:
            await self._connection.execute(cast(Executable, statement), dict(row))

    async def fetch_all(
        self, statement: ClauseElement, params: Mapping[str, Any] = NO_PARAMETERS
    ) -> list[dict[str, Any]]:
        result = await self._connection.execute(cast(Executable, statement), dict(params))
        return [dict(row) for row in result.mappings().all()]
