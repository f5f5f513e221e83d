"""The product use cases against an in-memory repository: the rules, without a database."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from services.common.errors import AlreadyExists, FailedPrecondition, NotFound
from services.common.pagination import PageTokens
from services.common.times import utcnow
from services.product.models import (
    RELEASED,
    RESERVED,
    Price,
    ProductDraft,
    ProductRow,
    ReservationInFlight,
    ReservationRow,
)
from services.product.usecases import Catalogue, Reservations
from tests.fakes.product import InMemoryProducts


@pytest.fixture
def store() -> InMemoryProducts:
    return InMemoryProducts()


@pytest.fixture
def catalogue(store: InMemoryProducts) -> Catalogue:
    return Catalogue(store, PageTokens("unit-test-secret"))


@pytest.fixture
def reservations(store: InMemoryProducts) -> Reservations:
    return Reservations(store)


async def product(catalogue: Catalogue, name: str = "Mug", stock: int = 10) -> ProductRow:
    return await catalogue.create(ProductDraft(name, "", Price("EUR", 500), stock))


def held(reservation: ReservationRow) -> dict[str, int]:
    return {item.product_id: item.quantity for item in reservation.items}


# The catalogue.


async def test_a_created_product_is_stored_with_its_name_trimmed(catalogue: Catalogue) -> None:
    mug = await catalogue.create(ProductDraft("  Mug ", "White", Price("USD", 1299), 7))
    assert mug.id.startswith("prd_")
    got = await catalogue.get(mug.id)
    assert (got.name, got.description, got.price_currency, got.price_amount_minor, got.stock) == (
        "Mug",
        "White",
        "USD",
        1299,
        7,
    )
    assert got.create_time == got.update_time == mug.create_time


async def test_an_update_sets_only_the_given_fields(catalogue: Catalogue) -> None:
    mug = await product(catalogue, "Mug", stock=10)
    updated = await catalogue.update(mug.id, {"price": Price("USD", 999), "name": "  Big mug "})
    assert (updated.name, updated.price_currency, updated.price_amount_minor) == (
        "Big mug",
        "USD",
        999,
    )
    assert (updated.stock, updated.description, updated.create_time) == (10, "", mug.create_time)
    assert updated.update_time >= mug.update_time
    assert (await catalogue.get(mug.id)).name == "Big mug"

    emptied = await catalogue.update(mug.id, {"stock": 0, "description": "Sold out"})
    assert (emptied.stock, emptied.description, emptied.name) == (0, "Sold out", "Big mug")


async def test_unknown_products_are_not_found(catalogue: Catalogue) -> None:
    with pytest.raises(NotFound) as raised:
        await catalogue.get("prd_missing")
    assert (raised.value.reason, raised.value.names) == ("PRODUCT_NOT_FOUND", ("prd_missing",))
    with pytest.raises(NotFound):
        await catalogue.update("prd_missing", {"stock": 1})


async def test_get_many_keeps_the_order_asked_and_names_every_missing_id(
    catalogue: Catalogue,
) -> None:
    a, b, c = [await product(catalogue, name) for name in "ABC"]
    assert [p.id for p in await catalogue.get_many([c.id, a.id, b.id])] == [c.id, a.id, b.id]
    with pytest.raises(NotFound) as raised:
        await catalogue.get_many([a.id, "prd_x", b.id, "prd_y"])
    assert raised.value.names == ("prd_x", "prd_y")


async def test_pages_walk_every_product_once_in_creation_order(catalogue: Catalogue) -> None:
    created = [await product(catalogue, f"P{i}") for i in range(5)]
    seen: list[str] = []
    token = ""
    while True:
        page, token = await catalogue.list_page(2, token)
        assert len(page) <= 2
        seen += [p.id for p in page]
        if not token:
            break
    assert seen == sorted(p.id for p in created)


# Reservations.


async def test_a_reservation_takes_the_stock_of_every_item(
    catalogue: Catalogue, reservations: Reservations, store: InMemoryProducts
) -> None:
    a, b = await product(catalogue, "A", 5), await product(catalogue, "B", 5)
    reserved = await reservations.reserve("res-1", {b.id: 3, a.id: 2})
    reservation = reserved.reservation
    assert (reservation.id, reservation.state, reservation.release_time) == (
        "res-1",
        RESERVED,
        None,
    )
    assert [(i.product_id, i.quantity) for i in reservation.items] == sorted([(a.id, 2), (b.id, 3)])
    assert (store.stock(a.id), store.stock(b.id)) == (3, 2)
    # The products named and priced as the reservation took them: what the order records.
    priced = {pid: (p.id, p.name, p.price) for pid, p in reserved.products.items()}
    assert priced == {a.id: (a.id, "A", Price("EUR", 500)), b.id: (b.id, "B", Price("EUR", 500))}


async def test_one_short_item_takes_nothing_and_leaves_the_id_free(
    catalogue: Catalogue, reservations: Reservations, store: InMemoryProducts
) -> None:
    a, b, c = (
        await product(catalogue, "A", 5),
        await product(catalogue, "B", 5),
        await product(catalogue, "C", 1),
    )
    with pytest.raises(FailedPrecondition) as raised:
        await reservations.reserve("res-2", {a.id: 1, b.id: 1, c.id: 2})
    assert raised.value.reason == "INSUFFICIENT_STOCK"
    assert raised.value.subjects == [f"product:{c.id}"]
    assert raised.value.metadata == {"product_ids": c.id}
    assert [store.stock(p.id) for p in (a, b, c)] == [5, 5, 1]

    ok = await reservations.reserve("res-2", {a.id: 1, c.id: 1})
    assert ok.reservation.state == RESERVED
    assert [store.stock(p.id) for p in (a, b, c)] == [4, 5, 0]


async def test_every_short_item_is_named(catalogue: Catalogue, reservations: Reservations) -> None:
    a, b = await product(catalogue, "A", 1), await product(catalogue, "B", 1)
    with pytest.raises(FailedPrecondition) as raised:
        await reservations.reserve("res", {b.id: 2, a.id: 2})
    assert raised.value.subjects == sorted([f"product:{a.id}", f"product:{b.id}"])
    assert raised.value.metadata == {"product_ids": ",".join(sorted([a.id, b.id]))}


async def test_unknown_products_are_named_and_nothing_is_taken(
    catalogue: Catalogue, reservations: Reservations, store: InMemoryProducts
) -> None:
    a, short = await product(catalogue, "A", 3), await product(catalogue, "Short", 0)
    with pytest.raises(NotFound) as raised:
        await reservations.reserve("u", {a.id: 1, short.id: 1, "prd_missing": 1})
    assert (raised.value.resource_type, raised.value.names) == ("product", ("prd_missing",))
    assert store.stock(a.id) == 3
    assert "u" not in store.reservations
    # Several unknown: named in the order asked.
    with pytest.raises(NotFound) as raised:
        await reservations.reserve("u", {"prd_zz": 1, a.id: 1, "prd_aa": 1})
    assert raised.value.names == ("prd_zz", "prd_aa")


async def test_a_repeated_reservation_is_a_no_op(
    catalogue: Catalogue, reservations: Reservations, store: InMemoryProducts
) -> None:
    a, b = await product(catalogue, "A", 10), await product(catalogue, "B", 10)
    first = (await reservations.reserve("order-attempt-1", {a.id: 4, b.id: 1})).reservation
    repeat = await reservations.reserve("order-attempt-1", {b.id: 1, a.id: 4})
    again = repeat.reservation
    assert (again.id, again.state, again.create_time, held(again)) == (
        first.id,
        first.state,
        first.create_time,
        held(first),
    )
    assert (store.stock(a.id), store.stock(b.id)) == (6, 9)
    # A repeat reads its products again, as they are now.
    await catalogue.update(a.id, {"price": Price("EUR", 650)})
    repeat = await reservations.reserve("order-attempt-1", {a.id: 4, b.id: 1})
    assert {pid: p.price.amount_minor for pid, p in repeat.products.items()} == {
        a.id: 650,
        b.id: 500,
    }


async def test_the_same_id_with_other_items_is_refused(
    catalogue: Catalogue, reservations: Reservations, store: InMemoryProducts
) -> None:
    a, b = await product(catalogue, "A", 10), await product(catalogue, "B", 10)
    await reservations.reserve("order-attempt-1", {a.id: 4})
    for other in ({a.id: 5}, {a.id: 4, b.id: 1}, {b.id: 4}):
        with pytest.raises(AlreadyExists) as raised:
            await reservations.reserve("order-attempt-1", other)
        assert raised.value.reason == "RESERVATION_MISMATCH"
        assert raised.value.metadata == {"reservation_id": "order-attempt-1"}
    assert (store.stock(a.id), store.stock(b.id)) == (6, 10)


async def test_a_release_gives_back_exactly_once(
    catalogue: Catalogue, reservations: Reservations, store: InMemoryProducts
) -> None:
    a, b = await product(catalogue, "A", 10), await product(catalogue, "B", 10)
    await reservations.reserve("r", {a.id: 3, b.id: 7})
    released, did = await reservations.release("r")
    assert (released.state, did, held(released)) == (RELEASED, True, {a.id: 3, b.id: 7})
    assert released.release_time is not None
    again, did_again = await reservations.release("r")
    assert (again.state, did_again, again.release_time) == (RELEASED, False, released.release_time)
    assert (store.stock(a.id), store.stock(b.id)) == (10, 10)


async def test_a_released_id_cannot_take_stock_again(
    catalogue: Catalogue, reservations: Reservations, store: InMemoryProducts
) -> None:
    a = await product(catalogue, "A", 10)
    await reservations.reserve("r", {a.id: 3})
    await reservations.release("r")
    with pytest.raises(FailedPrecondition) as raised:
        await reservations.reserve("r", {a.id: 3})
    assert raised.value.reason == "RESERVATION_RELEASED"
    assert raised.value.subjects == ["reservation:r"]
    assert store.stock(a.id) == 10


async def test_a_release_before_the_reservation_leaves_a_tombstone(
    catalogue: Catalogue, reservations: Reservations, store: InMemoryProducts
) -> None:
    """A compensation that overtakes a slow ReserveStock must not leak the stock."""
    a = await product(catalogue, "A", 2)
    tombstone, did = await reservations.release("late-one")
    assert (tombstone.state, did, list(tombstone.items)) == (RELEASED, False, [])
    with pytest.raises(FailedPrecondition) as raised:
        await reservations.reserve("late-one", {a.id: 1})
    assert raised.value.reason == "RESERVATION_RELEASED"
    assert store.stock(a.id) == 2


async def test_a_release_that_meets_a_reservation_in_flight_is_tried_again(
    catalogue: Catalogue, reservations: Reservations, store: InMemoryProducts
) -> None:
    a = await product(catalogue, "A", 10)
    await reservations.reserve("r", {a.id: 3})
    store.releases_in_flight = 1
    released, did = await reservations.release("r")
    assert (released.state, did) == (RELEASED, True)
    assert store.stock(a.id) == 10


async def test_a_release_is_tried_again_only_once(
    catalogue: Catalogue, reservations: Reservations, store: InMemoryProducts
) -> None:
    a = await product(catalogue, "A", 10)
    await reservations.reserve("r", {a.id: 3})
    store.releases_in_flight = 2
    with pytest.raises(ReservationInFlight):
        await reservations.release("r")
    assert store.stock(a.id) == 7
    assert store.reservations["r"].state == RESERVED


# Purging released reservations.


async def age(store: InMemoryProducts, reservation_id: str, by: timedelta) -> None:
    reservation = store.reservations[reservation_id]
    assert reservation.release_time is not None
    reservation.release_time -= by


async def test_only_reservations_released_before_the_cutoff_are_purged(
    catalogue: Catalogue, reservations: Reservations, store: InMemoryProducts
) -> None:
    a = await product(catalogue, "A", 10)
    await reservations.reserve("res_refused", {a.id: 1})
    await reservations.release("res_refused")
    await reservations.release("res_never_reserved")  # a tombstone
    await reservations.release("res_recent")  # a tombstone, released just now
    await reservations.reserve("res_live", {a.id: 2})  # still held: never purged
    for old in ("res_refused", "res_never_reserved"):
        await age(store, old, timedelta(hours=2))

    assert await reservations.purge(utcnow() - timedelta(hours=1)) == 2
    assert set(store.reservations) == {"res_recent", "res_live"}
    assert store.stock(a.id) == 8


async def test_the_purge_loop_purges_past_the_retention(
    catalogue: Catalogue, reservations: Reservations, store: InMemoryProducts
) -> None:
    await reservations.release("old")
    await reservations.release("recent")
    await age(store, "old", timedelta(hours=2))
    loop = asyncio.create_task(reservations.run_purge(retention=3600, interval=3600))
    try:
        await asyncio.wait_for(store.purged.wait(), 5)
    finally:
        loop.cancel()
    assert set(store.reservations) == {"recent"}
