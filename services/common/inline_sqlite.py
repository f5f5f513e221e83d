"""aiosqlite's connection, with every call run on the event loop's own thread.

aiosqlite hands each call (execute, fetch, commit...) to a worker thread and waits for
the answer: two thread switches and a wait for the GIL per call, several per query.
A SQLite call on a local file in WAL mode takes microseconds, so the hand-off costs
more than the work. This connection keeps aiosqlite's API (what SQLAlchemy's
`sqlite+aiosqlite` dialect drives) and runs each call inline.

What makes blocking the loop safe: in WAL mode a reader never waits, and the
process's writers take turns before they start (`Database.write`), so a write waits
on the file lock only when another process holds it, which the embedded default (one
process per database) never does; replicas use PostgreSQL.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Generator
from typing import Any

import aiosqlite


class _RunAtOnce:
    """Stands in for aiosqlite's queue to its worker thread, for callers that put work
    on it directly (SQLAlchemy's isolation_level setter): runs the work at once."""

    def put_nowait(self, item: tuple[asyncio.Future[Any] | None, Callable[[], Any]]) -> None:
        future, function = item
        try:
            result = function()
        except Exception as error:
            if future is not None:
                future.set_exception(error)
        else:
            if future is not None:
                future.set_result(result)


class InlineConnection(aiosqlite.Connection):
    """An aiosqlite connection without its worker thread."""

    def __init__(self, connector: Callable[[], sqlite3.Connection], iter_chunk_size: int) -> None:
        super().__init__(connector, iter_chunk_size)
        self._tx = _RunAtOnce()  # type: ignore[assignment]

    async def _execute(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if not self._running or not self._connection:
            raise ValueError("Connection closed")
        return fn(*args, **kwargs)

    async def _connect(self) -> InlineConnection:
        if self._connection is None:
            self._connection = self._connector()
        return self

    def __await__(self) -> Generator[Any, None, InlineConnection]:
        return self._connect().__await__()

    def stop(self) -> None:
        self._running = False
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    async def close(self) -> None:
        self.stop()


def creator(path: str) -> Callable[[], Any]:
    """`create_async_engine(..., async_creator=creator(path))` for the file at `path`."""

    async def connect() -> InlineConnection:
        return await InlineConnection(lambda: sqlite3.connect(path), iter_chunk_size=64)

    return connect
