"""Reservations end to end in the database, on SQLite and PostgreSQL: a release that
meets a reservation still being written gives the stock back, and released
reservations and tombstones do not pile up for ever."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from services.common import migrate
from services.common.db import Database
from services.common.pagination import PageTokens
from services.common.times import utcnow
from services.product.models import RELEASED, RESERVED, Price, ProductDraft, ReservedProduct
from services.product.repository import SqlProductRepository
from services.product.usecases import Catalogue, Reservations
from services.product.wiring import SPEC


@pytest.fixture
async def replicas(database_url: str, tmp_path: Path) -> AsyncIterator[tuple[Database, Database]]:
    """Two connections pools on one product database, as two replicas would have."""
    first, second = Database(database_url), Database(database_url)
    await migrate.upgrade(first, SPEC.migrations, SPEC.name)
    try:
        yield first, second
    finally:
        await first.close()
        await second.close()


def _catalogue(db: Database) -> Catalogue:
    return Catalogue(SqlProductRepository(db), PageTokens("t"))


def _reservations(db: Database) -> Reservations:
    return Reservations(SqlProductRepository(db))


async def _stock(db: Database, product_id: str) -> int:
    return (await _catalogue(db).get(product_id)).stock


async def _blocked_on_a_lock(db: Database) -> bool:
    """PostgreSQL: some session waits on a row lock (the release's tombstone insert)."""
    async with db.engine.connect() as connection:
        waiting = await connection.scalar(
            text(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
        )
    return bool(waiting)


async def test_a_release_during_the_reservation_transaction_gives_the_stock_back(
    replicas: tuple[Database, Database], monkeypatch: pytest.MonkeyPatch
) -> None:
    """ReleaseStock arrives while ReserveStock's transaction is still open: it waits on
    the reservation id, and once the reservation commits it is released, not left
    holding stock with "not released"."""
    first, second = replicas
    mug = await _catalogue(first).create(ProductDraft("Mug", "", Price("EUR", 500), stock=10))
    gate = asyncio.Event()
    inside = asyncio.Event()
    take_stock = SqlProductRepository.take_stock_in

    async def held_open(
        self: SqlProductRepository, session: Any, product_id: str, quantity: int, now: datetime
    ) -> ReservedProduct | None:
        inside.set()
        await gate.wait()  # the reservation row is written, its transaction still open
        return await take_stock(self, session, product_id, quantity, now)

    monkeypatch.setattr(SqlProductRepository, "take_stock_in", held_open)
    reserving = asyncio.create_task(_reservations(first).reserve("res_race", {mug.id: 3}))
    await asyncio.wait_for(inside.wait(), 5)
    releasing = asyncio.create_task(_reservations(second).release("res_race"))
    if first.is_sqlite:
        await asyncio.sleep(0.3)  # the release waits for the writer lock
    else:
        for _ in range(100):
            if await _blocked_on_a_lock(first):
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail("the release never waited on the reservation")
    assert not releasing.done()
    gate.set()
    reservation = (await asyncio.wait_for(reserving, 10)).reservation
    released, did_release = await asyncio.wait_for(releasing, 10)

    assert reservation.state == RESERVED
    assert did_release is True
    assert released.state == RELEASED
    assert await _stock(first, mug.id) == 10


async def test_released_reservations_and_tombstones_are_purged_after_retention(
    replicas: tuple[Database, Database],
) -> None:
    db, _ = replicas
    mug = await _catalogue(db).create(ProductDraft("Mug", "", Price("EUR", 500), stock=10))
    reservations = _reservations(db)
    await reservations.reserve("res_refused", {mug.id: 1})
    await reservations.release("res_refused")  # a refused order's reservation
    await reservations.release("res_never_reserved")  # a tombstone
    await reservations.reserve("res_live", {mug.id: 2})  # still held: never purged

    async def ids() -> set[str]:
        async with db.engine.connect() as connection:
            rows = await connection.execute(text("SELECT id FROM reservations"))
            return {row[0] for row in rows}

    assert await reservations.purge(utcnow() - timedelta(hours=1)) == 0  # too recent
    assert await ids() == {"res_refused", "res_never_reserved", "res_live"}
    assert await reservations.purge(utcnow() + timedelta(seconds=1)) == 2
    assert await ids() == {"res_live"}
    async with db.engine.connect() as connection:
        items = await connection.scalar(text("SELECT count(*) FROM reservation_items"))
    assert items == 1
    assert await _stock(db, mug.id) == 8
