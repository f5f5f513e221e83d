"""SQLite calls run on the event loop's thread, and a process's writers take turns."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from services.common.db import Database


async def test_sqlite_work_starts_no_thread_and_concurrent_writers_all_commit(
    tmp_path: Path,
) -> None:
    # Threads of earlier tests (a stopped gRPC server's) may end meanwhile: what counts is
    # that none is started.
    before = set(threading.enumerate())
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
        assert set(threading.enumerate()) <= before  # no aiosqlite worker thread
    finally:
        await first.close()
        await second.close()


async def test_a_lock_held_by_another_process_is_waited_for_without_freezing_the_loop(
    tmp_path: Path,
) -> None:
    path = tmp_path / "shared.db"
    db = Database(f"sqlite+aiosqlite:///{path}")
    try:
        async with db.write() as session:
            await session.execute(text("CREATE TABLE t (n INTEGER NOT NULL)"))
        # Another process (a sqlite3 shell, a second replica) holds the write lock for 1 s.
        holder = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            "import sqlite3, sys, time\n"
            f"c = sqlite3.connect({str(path)!r}, isolation_level=None)\n"
            "c.execute('BEGIN IMMEDIATE'); print('held', flush=True)\n"
            "time.sleep(1.0); c.execute('COMMIT')\n",
            stdout=asyncio.subprocess.PIPE,
        )
        assert holder.stdout is not None
        assert await holder.stdout.readline() == b"held\n"
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.05)
                ticks += 1

        ticker = asyncio.create_task(tick())
        started = time.monotonic()
        async with db.write() as session:
            await session.execute(text("INSERT INTO t VALUES (1)"))
        waited = time.monotonic() - started
        ticker.cancel()
        await holder.wait()
        assert waited >= 0.5, "the write went through while another process held the lock"
        # The loop went on meanwhile: a blocking wait would have let it tick once or not at all.
        assert ticks >= waited / 0.05 / 4, (ticks, waited)
        async with db.read() as session:
            assert (await session.execute(text("SELECT count(*) FROM t"))).scalar_one() == 1
    finally:
        await db.close()


async def test_a_write_inside_a_write_is_refused_instead_of_waiting_for_ever(
    tmp_path: Path,
) -> None:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'nested.db'}")
    try:
        with pytest.raises(RuntimeError, match="inside a write"):
            async with db.write(), asyncio.timeout(5), db.write():
                pass
        async with db.write() as session:  # the turn was given back
            await session.execute(text("CREATE TABLE ok (n INTEGER)"))
    finally:
        await db.close()
