"""The product repository's stock queries on SQLite and PostgreSQL, without the gRPC layer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from services.common import migrate
from services.common.db import Database
from services.common.times import utcnow
from services.product import repository
from services.product.models import ProductRow
from services.product.server import SPEC


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = Database(database_url)
    await migrate.upgrade(database, SPEC.migrations, SPEC.name)
    await migrate.upgrade(database, SPEC.migrations, SPEC.name)  # a second start changes nothing
    try:
        yield database
    finally:
        await database.close()


async def add_product(db: Database, product_id: str, stock: int) -> None:
    now = utcnow()
    async with db.write() as session:
        session.add(
            ProductRow(
                id=product_id,
                name=product_id,
                description="",
                price_currency="USD",
                price_amount_minor=100,
                stock=stock,
                create_time=now,
                update_time=now,
            )
        )


async def stock_of(db: Database, product_id: str) -> int:
    async with db.read() as session:
        product = await repository.get(session, product_id)
    assert product is not None
    return product.stock


async def test_concurrent_takes_never_oversell(db: Database) -> None:
    await add_product(db, "prd_limited", 20)

    async def take_one() -> bool:
        async with db.write() as session:
            return await repository.take_stock(session, "prd_limited", 1)

    results = await asyncio.gather(*(take_one() for _ in range(50)))
    assert results.count(True) == 20
    assert await stock_of(db, "prd_limited") == 0


async def test_take_is_all_or_nothing_per_row_and_give_back_restores(db: Database) -> None:
    await add_product(db, "prd_a", 3)
    async with db.write() as session:
        assert not await repository.take_stock(session, "prd_a", 4)
        assert not await repository.take_stock(session, "prd_unknown", 1)
        assert await repository.take_stock(session, "prd_a", 3)
    assert await stock_of(db, "prd_a") == 0
    async with db.write() as session:
        await repository.give_back_stock(session, "prd_a", 2)
    assert await stock_of(db, "prd_a") == 2


async def test_a_failed_unit_of_work_rolls_back(db: Database) -> None:
    await add_product(db, "prd_b", 5)
    with pytest.raises(RuntimeError):
        async with db.write() as session:
            assert await repository.take_stock(session, "prd_b", 5)
            raise RuntimeError("a later step failed")
    assert await stock_of(db, "prd_b") == 5


async def test_pages_follow_id_order(db: Database) -> None:
    for name in ("prd_3", "prd_1", "prd_2"):
        await add_product(db, name, 1)
    async with db.read() as session:
        first = await repository.page(session, None, 2)
        rest = await repository.page(session, first[-1].id, 2)
    assert [p.id for p in first] == ["prd_1", "prd_2"]
    assert [p.id for p in rest] == ["prd_3"]
