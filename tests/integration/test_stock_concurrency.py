"""ReserveStock under concurrent callers spread over two product-service processes."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from pathlib import Path

import grpc

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
from tests import tokens
from tests.processes import service_process

CALLS = 50
STOCK = 20


async def race_two_replicas(database_url: str, data_dir: Path) -> None:
    env = {"PRODUCT_DATABASE_URL": database_url, "DATA_DIR": str(data_dir), "LOG_LEVEL": "WARNING"}
    async with AsyncExitStack() as stack:
        # The second replica starts once the first has migrated the shared database.
        first = await stack.enter_async_context(service_process("product", env))
        second = await stack.enter_async_context(service_process("product", env))
        channels = [
            await stack.enter_async_context(tokens.admin_channel(p.address))
            for p in (first, second)
        ]
        catalogue = product_pb2_grpc.ProductServiceStub(channels[0])
        product = (
            await catalogue.CreateProduct(
                product_pb2.CreateProductRequest(
                    name="Limited",
                    price=money_pb2.Money(currency_code="USD", amount_minor=500),
                    stock=STOCK,
                )
            )
        ).product
        stubs = [internal_grpc.ProductInternalServiceStub(c) for c in channels]

        async def reserve(i: int) -> grpc.StatusCode:
            request = internal_pb2.ReserveStockRequest(
                reservation_id=f"race-{i}",
                items=[internal_pb2.StockItem(product_id=product.id, quantity=1)],
            )
            try:
                await stubs[i % 2].ReserveStock(request, timeout=30)
            except grpc.aio.AioRpcError as error:
                return error.code()
            return grpc.StatusCode.OK

        codes = await asyncio.gather(*(reserve(i) for i in range(CALLS)))
        assert codes.count(grpc.StatusCode.OK) == STOCK, codes
        assert set(codes) == {grpc.StatusCode.OK, grpc.StatusCode.FAILED_PRECONDITION}, set(codes)
        for stub in (product_pb2_grpc.ProductServiceStub(c) for c in channels):
            got = await stub.GetProduct(product_pb2.GetProductRequest(id=product.id))
            assert got.product.stock == 0


async def test_fifty_reservations_against_stock_twenty_on_postgres(tmp_path: Path) -> None:
    from tests.conftest import postgres_database

    async with postgres_database() as url:
        await race_two_replicas(url, tmp_path)


async def test_fifty_reservations_against_stock_twenty_on_one_sqlite_file(tmp_path: Path) -> None:
    await race_two_replicas(f"sqlite+aiosqlite:///{tmp_path / 'shared.db'}", tmp_path)
