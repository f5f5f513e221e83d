"""The product service over real gRPC on loopback, on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from google.protobuf import field_mask_pb2
from google.rpc import error_details_pb2

from services.product.wiring import SPEC
from shop.common.v1 import money_pb2
from shop.product.v1 import (
    product_internal_pb2 as internal_pb2,
)
from shop.product.v1 import (
    product_internal_pb2_grpc as internal_grpc,
)
from shop.product.v1 import (
    product_pb2,
    product_pb2_grpc,
)
from tests.conftest import running
from tests.rpc import detail, fails, violated_fields

INVALID = grpc.StatusCode.INVALID_ARGUMENT


def usd(amount: int) -> money_pb2.Money:
    return money_pb2.Money(currency_code="USD", amount_minor=amount)


@dataclass
class Stubs:
    products: product_pb2_grpc.ProductServiceAsyncStub
    internal: internal_grpc.ProductInternalServiceAsyncStub

    async def create(
        self, name: str = "Mug", price: int = 1299, stock: int = 10
    ) -> product_pb2.Product:
        response = await self.products.CreateProduct(
            product_pb2.CreateProductRequest(name=name, price=usd(price), stock=stock)
        )
        return response.product

    async def stock(self, product_id: str) -> int:
        response = await self.products.GetProduct(product_pb2.GetProductRequest(id=product_id))
        return response.product.stock

    async def reserve(self, reservation_id: str, **items: int) -> internal_pb2.Reservation:
        response = await self.internal.ReserveStock(
            internal_pb2.ReserveStockRequest(
                reservation_id=reservation_id,
                items=[internal_pb2.StockItem(product_id=p, quantity=q) for p, q in items.items()],
            )
        )
        return response.reservation

    async def release(self, reservation_id: str) -> internal_pb2.ReleaseStockResponse:
        return await self.internal.ReleaseStock(
            internal_pb2.ReleaseStockRequest(reservation_id=reservation_id)
        )

    async def all_products(self) -> list[product_pb2.Product]:
        response = await self.products.ListProducts(product_pb2.ListProductsRequest(page_size=1000))
        return list(response.products)


@pytest.fixture
async def stubs(database_url: str, tmp_path: Path) -> AsyncIterator[Stubs]:
    async with running(SPEC, database_url, tmp_path) as (_, channel):
        yield Stubs(
            product_pb2_grpc.ProductServiceStub(channel),
            internal_grpc.ProductInternalServiceStub(channel),
        )


async def test_catalogue_round_trip(stubs: Stubs) -> None:
    mug = await stubs.create("Mug", 1299, 10)
    assert mug.id.startswith("prd_")
    assert (mug.name, mug.price.currency_code, mug.price.amount_minor, mug.stock) == (
        "Mug",
        "USD",
        1299,
        10,
    )
    got = (await stubs.products.GetProduct(product_pb2.GetProductRequest(id=mug.id))).product
    assert got == mug

    updated = (
        await stubs.products.UpdateProduct(
            product_pb2.UpdateProductRequest(
                product=product_pb2.Product(
                    id=mug.id,
                    price=money_pb2.Money(currency_code="EUR", amount_minor=999),
                    name="ignored",
                ),
                update_mask=field_mask_pb2.FieldMask(paths=["price", "stock"]),
            )
        )
    ).product
    assert (updated.name, updated.price.currency_code, updated.price.amount_minor) == (
        "Mug",
        "EUR",
        999,
    )
    assert updated.stock == 0, "a masked field left at its default is set to the default"


async def test_batch_get_keeps_request_order_and_names_every_missing_id(stubs: Stubs) -> None:
    a, b, c = [await stubs.create(n) for n in ("A", "B", "C")]
    got = await stubs.products.BatchGetProducts(
        product_pb2.BatchGetProductsRequest(ids=[c.id, a.id, b.id])
    )
    assert [p.id for p in got.products] == [c.id, a.id, b.id]

    error = await fails(
        stubs.products.BatchGetProducts(
            product_pb2.BatchGetProductsRequest(ids=[a.id, "prd_x", "prd_y"])
        ),
        grpc.StatusCode.NOT_FOUND,
    )
    assert "prd_x" in (error.details() or "") and "prd_y" in (error.details() or "")
    for bad in ([], [a.id, a.id], [""]):
        error = await fails(
            stubs.products.BatchGetProducts(product_pb2.BatchGetProductsRequest(ids=bad)), INVALID
        )
        assert {f.split("[")[0] for f in violated_fields(error)} == {"ids"}


@pytest.mark.parametrize(
    ("request_", "fields"),
    [
        (product_pb2.CreateProductRequest(name="", price=usd(100)), {"name"}),
        (product_pb2.CreateProductRequest(name=" ", price=usd(100)), {"name"}),
        (product_pb2.CreateProductRequest(name="Mug", price=usd(-5)), {"price"}),
        (product_pb2.CreateProductRequest(name="Mug", price=usd(0)), {"price"}),
        (product_pb2.CreateProductRequest(name="Mug"), {"price"}),
        (
            product_pb2.CreateProductRequest(
                name="Mug", price=money_pb2.Money(currency_code="usd", amount_minor=5)
            ),
            {"price.currency_code"},
        ),
        (
            product_pb2.CreateProductRequest(
                name="Mug", price=money_pb2.Money(currency_code="XYZ", amount_minor=5)
            ),
            {"price.currency_code"},
        ),
        (product_pb2.CreateProductRequest(name="Mug", price=usd(100), stock=-1), {"stock"}),
    ],
    ids=[
        "empty_name",
        "blank_name",
        "negative_price",
        "zero_price",
        "no_price",
        "lowercase_currency",
        "unknown_currency",
        "negative_stock",
    ],
)
async def test_bad_products_are_refused_and_nothing_is_written(
    stubs: Stubs, request_: product_pb2.CreateProductRequest, fields: set[str]
) -> None:
    error = await fails(stubs.products.CreateProduct(request_), INVALID)
    assert violated_fields(error) == fields
    assert await stubs.all_products() == []


async def test_bad_updates_change_nothing(stubs: Stubs) -> None:
    mug = await stubs.create()
    bad_updates = {
        "unknown_path": (
            product_pb2.Product(id=mug.id, name="X"),
            ["name", "colour"],
            {"update_mask"},
        ),
        "negative_price": (
            product_pb2.Product(id=mug.id, price=usd(-1)),
            ["price"],
            {"product.price"},
        ),
        "price_cleared": (product_pb2.Product(id=mug.id), ["price"], {"product.price"}),
        "empty_name": (product_pb2.Product(id=mug.id), ["name"], {"product.name"}),
        "negative_stock": (product_pb2.Product(id=mug.id, stock=-3), ["stock"], {"product.stock"}),
    }
    for name, (product, paths, fields) in bad_updates.items():
        error = await fails(
            stubs.products.UpdateProduct(
                product_pb2.UpdateProductRequest(
                    product=product, update_mask=field_mask_pb2.FieldMask(paths=paths)
                )
            ),
            INVALID,
        )
        assert violated_fields(error) == fields, name
    await fails(
        stubs.products.UpdateProduct(
            product_pb2.UpdateProductRequest(product=product_pb2.Product(id="prd_nope", name="X"))
        ),
        grpc.StatusCode.NOT_FOUND,
    )
    assert await stubs.all_products() == [mug]


async def test_reserve_takes_all_items_or_none(stubs: Stubs) -> None:
    a, b, c = (
        await stubs.create("A", stock=5),
        await stubs.create("B", stock=5),
        await stubs.create("C", stock=1),
    )

    response = await stubs.internal.ReserveStock(
        internal_pb2.ReserveStockRequest(
            reservation_id="res-1",
            items=[
                internal_pb2.StockItem(product_id=b.id, quantity=3),
                internal_pb2.StockItem(product_id=a.id, quantity=2),
            ],
        )
    )
    reservation = response.reservation
    assert reservation.state == internal_pb2.RESERVATION_STATE_RESERVED
    # The reserved products come back in the request's order, named and priced.
    assert [(p.product_id, p.name, p.price) for p in response.products] == [
        (b.id, "B", b.price),
        (a.id, "A", a.price),
    ]
    assert {(i.product_id, i.quantity) for i in reservation.items} == {(a.id, 2), (b.id, 3)}
    assert (await stubs.stock(a.id), await stubs.stock(b.id)) == (3, 2)

    # One of three items short: nothing at all is taken.
    error = await fails(
        stubs.reserve("res-2", **{a.id: 1, b.id: 1, c.id: 2}), grpc.StatusCode.FAILED_PRECONDITION
    )
    assert detail(error, error_details_pb2.ErrorInfo).reason == "INSUFFICIENT_STOCK"
    failure = detail(error, error_details_pb2.PreconditionFailure)
    assert [v.subject for v in failure.violations] == [f"product:{c.id}"]
    assert [await stubs.stock(p.id) for p in (a, b, c)] == [3, 2, 1]

    # The failed id was not used up: it can be reserved once there is stock.
    ok = await stubs.reserve("res-2", **{a.id: 1, c.id: 1})
    assert ok.state == internal_pb2.RESERVATION_STATE_RESERVED
    assert [await stubs.stock(p.id) for p in (a, b, c)] == [2, 2, 0]


async def test_reservation_is_idempotent_on_its_id(stubs: Stubs) -> None:
    a = await stubs.create("A", stock=10)
    first = await stubs.reserve("order-attempt-1", **{a.id: 4})
    again = await stubs.reserve("order-attempt-1", **{a.id: 4})
    assert again == first
    assert await stubs.stock(a.id) == 6

    error = await fails(
        stubs.reserve("order-attempt-1", **{a.id: 5}), grpc.StatusCode.ALREADY_EXISTS
    )
    assert detail(error, error_details_pb2.ErrorInfo).reason == "RESERVATION_MISMATCH"
    assert await stubs.stock(a.id) == 6

    # Concurrent repeats of one reservation take the stock once.
    results = await asyncio.gather(
        *(stubs.reserve("order-attempt-2", **{a.id: 1}) for _ in range(10))
    )
    assert len({r.SerializeToString() for r in results}) == 1
    assert await stubs.stock(a.id) == 5


async def test_release_gives_back_exactly_once(stubs: Stubs) -> None:
    a, b = await stubs.create("A", stock=10), await stubs.create("B", stock=10)
    await stubs.reserve("r", **{a.id: 3, b.id: 7})
    released = await asyncio.gather(*(stubs.release("r") for _ in range(5)))
    assert sorted(r.released for r in released) == [False] * 4 + [True]
    assert all(r.reservation.state == internal_pb2.RESERVATION_STATE_RELEASED for r in released)
    assert (await stubs.stock(a.id), await stubs.stock(b.id)) == (10, 10)
    # A released id cannot take stock again.
    error = await fails(
        stubs.reserve("r", **{a.id: 3, b.id: 7}), grpc.StatusCode.FAILED_PRECONDITION
    )
    assert detail(error, error_details_pb2.ErrorInfo).reason == "RESERVATION_RELEASED"
    assert await stubs.stock(a.id) == 10


async def test_release_before_reserve_leaves_a_tombstone(stubs: Stubs) -> None:
    """A compensation that overtakes a slow ReserveStock must not leak the stock."""
    a = await stubs.create("A", stock=2)
    early = await stubs.release("late-one")
    assert (early.released, list(early.reservation.items)) == (False, [])
    await fails(stubs.reserve("late-one", **{a.id: 1}), grpc.StatusCode.FAILED_PRECONDITION)
    assert await stubs.stock(a.id) == 2


@pytest.mark.parametrize(
    ("items", "fields"),
    [
        ({"{a}": 0}, {"items[0].quantity"}),
        ({"{a}": -2}, {"items[0].quantity"}),
        ({}, {"items"}),
        ({"": 1}, {"items[0].product_id"}),
    ],
    ids=["quantity_0", "negative_quantity", "no_items", "empty_product_id"],
)
async def test_bad_reservations_take_nothing(
    stubs: Stubs, items: dict[str, int], fields: set[str]
) -> None:
    a = await stubs.create("A", stock=3)
    request = internal_pb2.ReserveStockRequest(
        reservation_id="bad",
        items=[
            internal_pb2.StockItem(product_id=a.id if p == "{a}" else p, quantity=q)
            for p, q in items.items()
        ],
    )
    error = await fails(stubs.internal.ReserveStock(request), INVALID)
    assert violated_fields(error) == fields
    assert await stubs.stock(a.id) == 3
    # The id was not consumed by the refused call.
    assert (
        await stubs.reserve("bad", **{a.id: 1})
    ).state == internal_pb2.RESERVATION_STATE_RESERVED


async def test_reserving_unknown_or_repeated_products(stubs: Stubs) -> None:
    a = await stubs.create("A", stock=3)
    error = await fails(
        stubs.reserve("u", **{a.id: 1, "prd_missing": 1}), grpc.StatusCode.NOT_FOUND
    )
    info = detail(error, error_details_pb2.ResourceInfo)
    assert (info.resource_type, info.resource_name) == ("product", "prd_missing")
    assert await stubs.stock(a.id) == 3

    twice = internal_pb2.ReserveStockRequest(
        reservation_id="dup",
        items=[internal_pb2.StockItem(product_id=a.id, quantity=1)] * 2,
    )
    error = await fails(stubs.internal.ReserveStock(twice), INVALID)
    assert violated_fields(error) == {"items.product_id"}
    error = await fails(
        stubs.internal.ReserveStock(internal_pb2.ReserveStockRequest(items=twice.items[:1])),
        INVALID,
    )
    assert violated_fields(error) == {"reservation_id"}
    assert await stubs.stock(a.id) == 3
