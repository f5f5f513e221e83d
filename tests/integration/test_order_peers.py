"""The order service's product client against product services of two versions: one
that prices its reservations and one from before (a rolling update reaches the
services one by one, in any order)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from services.common.config import BreakerSettings
from services.order.models import PricedProduct
from services.order.peers import GrpcPeers
from shop.common.v1 import money_pb2
from shop.product.v1 import (
    product_internal_pb2,
    product_internal_pb2_grpc,
    product_pb2,
    product_pb2_grpc,
)

MUG = product_pb2.Product(
    id="prd_mug", name="Mug", price=money_pb2.Money(currency_code="EUR", amount_minor=1299)
)
TEA = product_pb2.Product(
    id="prd_tea", name="Tea", price=money_pb2.Money(currency_code="EUR", amount_minor=450)
)
CATALOGUE = {p.id: p for p in (MUG, TEA)}


class Stock(product_internal_pb2_grpc.ProductInternalServiceServicer):
    def __init__(self, priced: bool) -> None:
        self.priced = priced

    async def ReserveStock(
        self, request: product_internal_pb2.ReserveStockRequest, context: object
    ) -> product_internal_pb2.ReserveStockResponse:
        reservation = product_internal_pb2.Reservation(
            reservation_id=request.reservation_id,
            items=request.items,
            state=product_internal_pb2.RESERVATION_STATE_RESERVED,
        )
        if not self.priced:  # as product services answered before ReservedProduct
            return product_internal_pb2.ReserveStockResponse(reservation=reservation)
        products = [
            product_internal_pb2.ReservedProduct(
                product_id=item.product_id,
                name=CATALOGUE[item.product_id].name,
                price=CATALOGUE[item.product_id].price,
            )
            for item in request.items
        ]
        return product_internal_pb2.ReserveStockResponse(reservation=reservation, products=products)


class Catalogue(product_pb2_grpc.ProductServiceServicer):
    def __init__(self) -> None:
        self.batch_reads = 0

    async def BatchGetProducts(
        self, request: product_pb2.BatchGetProductsRequest, context: object
    ) -> product_pb2.BatchGetProductsResponse:
        self.batch_reads += 1
        return product_pb2.BatchGetProductsResponse(products=[CATALOGUE[i] for i in request.ids])


@pytest.fixture(params=[True, False], ids=["priced answer", "older product service"])
async def product_service(
    request: pytest.FixtureRequest,
) -> AsyncIterator[tuple[str, Catalogue, bool]]:
    server = grpc.aio.server()
    catalogue = Catalogue()  # type: ignore[abstract]  # only the methods called here
    product_internal_pb2_grpc.add_ProductInternalServiceServicer_to_server(
        Stock(priced=request.param),  # type: ignore[abstract]
        server,
    )
    product_pb2_grpc.add_ProductServiceServicer_to_server(catalogue, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}", catalogue, request.param
    finally:
        await server.stop(0)


async def test_an_order_is_priced_by_either_version_of_the_product_service(
    product_service: tuple[str, Catalogue, bool],
) -> None:
    address, catalogue, priced_answer = product_service
    peers = GrpcPeers(address, address, address, BreakerSettings())
    try:
        priced = await peers.reserve("res_1", {"prd_tea": 2, "prd_mug": 1})
    finally:
        await peers.close()
    assert priced == [
        PricedProduct("prd_tea", "Tea", "EUR", 450),
        PricedProduct("prd_mug", "Mug", "EUR", 1299),
    ]
    # A priced answer needs no read of its own; an older service's is read as before.
    assert catalogue.batch_reads == (0 if priced_answer else 1)
