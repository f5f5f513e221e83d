"""gRPC servicers of the product service: protos in, use cases, protos out."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import grpc

from services.common import fieldmask
from services.common.auth import require_admin
from services.common.config import DEFAULT_PORTS
from services.common.interceptors import Context
from services.common.server import Runtime, ServiceSpec
from services.common.times import to_timestamp
from services.product.models import RELEASED, ProductRow, ReservationRow
from services.product.service import UPDATABLE, Catalogue, Price, ProductDraft, Reservations
from shop.common.v1 import money_pb2
from shop.product.v1 import (
    product_internal_pb2,
    product_internal_pb2_grpc,
    product_pb2,
    product_pb2_grpc,
)


def to_proto(product: ProductRow) -> product_pb2.Product:
    return product_pb2.Product(
        id=product.id,
        name=product.name,
        description=product.description,
        price=money_pb2.Money(
            currency_code=product.price_currency, amount_minor=product.price_amount_minor
        ),
        stock=product.stock,
        create_time=to_timestamp(product.create_time),
        update_time=to_timestamp(product.update_time),
    )


def reservation_to_proto(reservation: ReservationRow) -> product_internal_pb2.Reservation:
    return product_internal_pb2.Reservation(
        reservation_id=reservation.id,
        items=[
            product_internal_pb2.StockItem(product_id=i.product_id, quantity=i.quantity)
            for i in reservation.items
        ],
        state=(
            product_internal_pb2.RESERVATION_STATE_RELEASED
            if reservation.state == RELEASED
            else product_internal_pb2.RESERVATION_STATE_RESERVED
        ),
        create_time=to_timestamp(reservation.create_time),
        release_time=to_timestamp(reservation.release_time),
    )


def _price(money: money_pb2.Money) -> Price:
    return Price(currency_code=money.currency_code, amount_minor=money.amount_minor)


class ProductServicer(product_pb2_grpc.ProductServiceServicer):
    def __init__(self, catalogue: Catalogue) -> None:
        self._catalogue = catalogue

    async def CreateProduct(
        self, request: product_pb2.CreateProductRequest, context: Context
    ) -> product_pb2.CreateProductResponse:
        require_admin()
        draft = ProductDraft(
            name=request.name,
            description=request.description,
            price=_price(request.price),
            stock=request.stock,
        )
        product = await self._catalogue.create(draft)
        return product_pb2.CreateProductResponse(product=to_proto(product))

    async def GetProduct(
        self, request: product_pb2.GetProductRequest, context: Context
    ) -> product_pb2.GetProductResponse:
        return product_pb2.GetProductResponse(
            product=to_proto(await self._catalogue.get(request.id))
        )

    async def ListProducts(
        self, request: product_pb2.ListProductsRequest, context: Context
    ) -> product_pb2.ListProductsResponse:
        size = request.page_size if request.HasField("page_size") else None
        rows, next_token = await self._catalogue.list_page(size, request.page_token)
        return product_pb2.ListProductsResponse(
            products=[to_proto(p) for p in rows], next_page_token=next_token
        )

    async def UpdateProduct(
        self, request: product_pb2.UpdateProductRequest, context: Context
    ) -> product_pb2.UpdateProductResponse:
        require_admin()
        changes = fieldmask.changes(request.update_mask, request.product, UPDATABLE)
        if "price" in changes:
            changes["price"] = _price(changes["price"])
        product = await self._catalogue.update(request.product.id, changes)
        return product_pb2.UpdateProductResponse(product=to_proto(product))

    async def BatchGetProducts(
        self, request: product_pb2.BatchGetProductsRequest, context: Context
    ) -> product_pb2.BatchGetProductsResponse:
        products = await self._catalogue.get_many(list(request.ids))
        return product_pb2.BatchGetProductsResponse(products=[to_proto(p) for p in products])


class ProductInternalServicer(product_internal_pb2_grpc.ProductInternalServiceServicer):
    def __init__(self, reservations: Reservations) -> None:
        self._reservations = reservations

    async def ReserveStock(
        self, request: product_internal_pb2.ReserveStockRequest, context: Context
    ) -> product_internal_pb2.ReserveStockResponse:
        items = {item.product_id: item.quantity for item in request.items}
        reservation = await self._reservations.reserve(request.reservation_id, items)
        return product_internal_pb2.ReserveStockResponse(
            reservation=reservation_to_proto(reservation)
        )

    async def ReleaseStock(
        self, request: product_internal_pb2.ReleaseStockRequest, context: Context
    ) -> product_internal_pb2.ReleaseStockResponse:
        reservation, released = await self._reservations.release(request.reservation_id)
        return product_internal_pb2.ReleaseStockResponse(
            reservation=reservation_to_proto(reservation), released=released
        )


def register(server: grpc.aio.Server, runtime: Runtime) -> Sequence[str]:
    product_pb2_grpc.add_ProductServiceServicer_to_server(
        ProductServicer(Catalogue(runtime.db, runtime.page_tokens)), server
    )
    reservations = Reservations(runtime.db)
    # Seconds a released reservation (or tombstone) is kept (RESERVATION_RETENTION): far
    # longer than any order attempt that could still send a ReserveStock under its id.
    retention = runtime.config.reservation_retention
    runtime.background.append(lambda: reservations.run_purge(retention))
    product_internal_pb2_grpc.add_ProductInternalServiceServicer_to_server(
        ProductInternalServicer(reservations), server
    )
    return [
        product_pb2.DESCRIPTOR.services_by_name["ProductService"].full_name,
        product_internal_pb2.DESCRIPTOR.services_by_name["ProductInternalService"].full_name,
    ]


SPEC = ServiceSpec(
    name="product",
    default_port=DEFAULT_PORTS["product"],
    migrations=Path(__file__).parent / "migrations",
    register=register,
)
