"""SQLite calls run on the event loop's thread, and a process's writers take turns."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from sqlalchemy import text

from services.common.db import Database


async def test_sqlite_work_starts_no_thread_and_concurrent_writers_all_commit(
    tmp_path: Path,
) -> None:
    before = threading.active_count()
    first = Database(f"sqlite+aiosqlite:///{tmp_path / 'one.db'}")
    # A second Database on the same file: what two replicas of a test share.
    second = Database(f"sqlite+aiosqlite:///{tmp_path / 'one.db'}")
    try:
        async with first.write() as session:
            await session.execute(text("CREATE TABLE counter (n INTEGER NOT NULL)"))
            await session.execute(text("INSERT INTO counter VALUES (0)"))

        async def bump(db: Database) -> None:
            async with db.write() as session:
                n = (await session.execute(text("SELECT n FROM counter"))).scalar_one()
                await asyncio.sleep(0)  # another writer gets the loop in the middle
                await session.execute(text("UPDATE counter SET n = :n"), {"n": n + 1})

        # Without turns, 'database is locked' (or a lost update) within the 5 s busy wait.
        await asyncio.wait_for(
            asyncio.gather(*(bump(first if i % 2 else second) for i in range(100))), 20
        )
        async with first.read() as session:
            assert (await session.execute(text("SELECT n FROM counter"))).scalar_one() == 100
        assert threading.active_count() == before  # no aiosqlite worker thread
    finally:
        await first.close()
        await second.close()
