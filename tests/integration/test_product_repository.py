"""The SQL product repository on SQLite and PostgreSQL, without the use cases or gRPC."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from services.common import migrate
from services.common.db import Database
from services.common.times import as_utc, utcnow
from services.product.models import (
    RELEASED,
    RESERVED,
    InsufficientStock,
    Price,
    ProductRow,
    ReservationExists,
    ReservedProduct,
    UnknownProducts,
)
from services.product.repository import SqlProductRepository
from services.product.wiring import SPEC


@pytest.fixture
async def repo(database_url: str) -> AsyncIterator[SqlProductRepository]:
    database = Database(database_url)
    await migrate.upgrade(database, SPEC.migrations, SPEC.name)
    await migrate.upgrade(database, SPEC.migrations, SPEC.name)  # a second start changes nothing
    try:
        yield SqlProductRepository(database)
    finally:
        await database.close()


async def add_product(repo: SqlProductRepository, product_id: str, stock: int) -> None:
    now = utcnow()
    await repo.add(
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


async def stock_of(repo: SqlProductRepository, product_id: str) -> int:
    product = await repo.get(product_id)
    assert product is not None
    return product.stock


async def test_concurrent_takes_never_oversell(repo: SqlProductRepository) -> None:
    await add_product(repo, "prd_limited", 20)

    async def take_one(i: int) -> bool:
        try:
            await repo.reserve(f"res_{i}", {"prd_limited": 1}, utcnow())
        except InsufficientStock:
            return False
        return True

    results = await asyncio.gather(*(take_one(i) for i in range(50)))
    assert results.count(True) == 20
    assert await stock_of(repo, "prd_limited") == 0


async def test_take_is_all_or_nothing_per_row_and_give_back_restores(
    repo: SqlProductRepository,
) -> None:
    await add_product(repo, "prd_a", 3)
    with pytest.raises(InsufficientStock) as short:
        await repo.reserve("res_1", {"prd_a": 4}, utcnow())
    assert short.value.product_ids == ["prd_a"]
    with pytest.raises(UnknownProducts) as unknown:
        await repo.reserve("res_2", {"prd_a": 1, "prd_unknown": 1}, utcnow())
    assert unknown.value.product_ids == ["prd_unknown"]
    assert await stock_of(repo, "prd_a") == 3
    await repo.reserve("res_3", {"prd_a": 1}, utcnow())
    await repo.reserve("res_4", {"prd_a": 2}, utcnow())
    assert await stock_of(repo, "prd_a") == 0
    released, did = await repo.release("res_4", utcnow())
    assert (released.state, did) == (RELEASED, True)
    assert await stock_of(repo, "prd_a") == 2
    assert (await repo.release("res_4", utcnow()))[1] is False
    assert await stock_of(repo, "prd_a") == 2


async def test_a_failed_unit_of_work_rolls_back(repo: SqlProductRepository) -> None:
    """The first item's stock was taken before the second came up short: both stay."""
    await add_product(repo, "prd_b", 5)
    await add_product(repo, "prd_c", 1)
    with pytest.raises(InsufficientStock):
        await repo.reserve("res_b", {"prd_b": 5, "prd_c": 2}, utcnow())
    assert (await stock_of(repo, "prd_b"), await stock_of(repo, "prd_c")) == (5, 1)
    # Nor was the reservation id kept: it can be reserved now.
    reserved = await repo.reserve("res_b", {"prd_b": 5}, utcnow())
    assert [(i.product_id, i.quantity) for i in reserved.reservation.items] == [("prd_b", 5)]


async def test_a_taken_id_takes_nothing_and_returns_what_it_holds(
    repo: SqlProductRepository,
) -> None:
    await add_product(repo, "prd_d", 5)
    await repo.reserve("res_d", {"prd_d": 2}, utcnow())
    with pytest.raises(ReservationExists) as taken:
        await repo.reserve("res_d", {"prd_d": 3}, utcnow())
    assert [(i.product_id, i.quantity) for i in taken.value.reservation.items] == [("prd_d", 2)]
    assert await stock_of(repo, "prd_d") == 3


async def test_a_release_of_an_unknown_id_leaves_a_tombstone(repo: SqlProductRepository) -> None:
    tombstone, did = await repo.release("res_never", utcnow())
    assert (tombstone.state, did, list(tombstone.items)) == (RELEASED, False, [])
    with pytest.raises(ReservationExists) as taken:
        await repo.reserve("res_never", {"prd_any": 1}, utcnow())
    assert taken.value.reservation.state == RELEASED


async def test_updates_and_lookups(repo: SqlProductRepository) -> None:
    await add_product(repo, "prd_e", 1)
    await add_product(repo, "prd_f", 1)
    updated = await repo.update("prd_e", {"name": "Eggcup", "stock": 4})
    assert updated is not None and (updated.name, updated.stock) == ("Eggcup", 4)
    assert await stock_of(repo, "prd_e") == 4
    assert await repo.update("prd_missing", {"stock": 1}) is None
    assert set(await repo.get_many(["prd_e", "prd_f", "prd_missing"])) == {"prd_e", "prd_f"}


async def test_pages_follow_id_order(repo: SqlProductRepository) -> None:
    for name in ("prd_3", "prd_1", "prd_2"):
        await add_product(repo, name, 1)
    first = await repo.page(None, 2)
    rest = await repo.page(first[-1].id, 2)
    assert [p.id for p in first] == ["prd_1", "prd_2"]
    assert [p.id for p in rest] == ["prd_3"]


async def test_reserve_and_release_return_what_is_stored(repo: SqlProductRepository) -> None:
    """The rows reserve and release hand back (written without the ORM) carry the values
    a read of the stored reservation finds."""
    await add_product(repo, "prd_g", 5)
    await add_product(repo, "prd_h", 5)
    reserved_at, released_at = utcnow(), utcnow()
    reserved = await repo.reserve("res_g", {"prd_h": 2, "prd_g": 1}, reserved_at)
    reservation = reserved.reservation
    assert (reservation.id, reservation.state, reservation.release_time) == (
        "res_g",
        RESERVED,
        None,
    )
    assert reservation.create_time == reserved_at
    items = [(i.reservation_id, i.product_id, i.quantity) for i in reservation.items]
    assert items == [("res_g", "prd_g", 1), ("res_g", "prd_h", 2)]
    # The products' names and prices as the UPDATE took the stock (RETURNING).
    assert reserved.products == {
        "prd_g": ReservedProduct("prd_g", "prd_g", Price("USD", 100)),
        "prd_h": ReservedProduct("prd_h", "prd_h", Price("USD", 100)),
    }
    assert (await stock_of(repo, "prd_g"), await stock_of(repo, "prd_h")) == (4, 3)

    with pytest.raises(ReservationExists) as taken:
        await repo.reserve("res_g", {"prd_g": 1}, utcnow())
    stored = taken.value.reservation
    assert (stored.state, as_utc(stored.create_time)) == (RESERVED, reserved_at)
    assert [(i.reservation_id, i.product_id, i.quantity) for i in stored.items] == items

    for did in (True, False):
        released, did_release = await repo.release("res_g", released_at)
        assert (released.id, released.state, did_release) == ("res_g", RELEASED, did)
        assert as_utc(released.create_time) == reserved_at
        assert released.release_time is not None and as_utc(released.release_time) == released_at
        assert [(i.reservation_id, i.product_id, i.quantity) for i in released.items] == items
    assert (await stock_of(repo, "prd_g"), await stock_of(repo, "prd_h")) == (5, 5)


async def test_get_many_of_few_and_of_many_ids(repo: SqlProductRepository) -> None:
    """A few ids are read one by one, many (on PostgreSQL) in one query: alike."""
    await add_product(repo, "prd_i", 3)
    found = await repo.get_many(["prd_i", "prd_missing", "prd_i"])
    assert list(found) == ["prd_i"] and found["prd_i"].stock == 3
    assert await repo.get_many([]) == {}
    many = [f"prd_many_{n:02d}" for n in range(12)]
    for n, product_id in enumerate(many[:10]):
        await add_product(repo, product_id, n)
    found = await repo.get_many([*many, "prd_i"])
    assert {product_id: row.stock for product_id, row in found.items()} == {
        **{product_id: n for n, product_id in enumerate(many[:10])},
        "prd_i": 3,
    }
