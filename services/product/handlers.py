"""gRPC handlers of the product service: the caller's rights and the proto in, a use case,
the proto out; nothing else."""

from __future__ import annotations

from services.common.auth import require_admin
from services.common.interceptors import Context
from services.product.convert import (
    changes_from_proto,
    draft_from_proto,
    items_from_proto,
    product_to_proto,
    reservation_to_proto,
    reserved_product_to_proto,
)
from services.product.usecases import Catalogue, Reservations
from shop.product.v1 import (
    product_internal_pb2,
    product_internal_pb2_grpc,
    product_pb2,
    product_pb2_grpc,
)


class ProductServicer(product_pb2_grpc.ProductServiceServicer):
    def __init__(self, catalogue: Catalogue) -> None:
        self._catalogue = catalogue

    async def CreateProduct(
        self, request: product_pb2.CreateProductRequest, context: Context
    ) -> product_pb2.CreateProductResponse:
        require_admin()
        product = await self._catalogue.create(draft_from_proto(request))
        return product_pb2.CreateProductResponse(product=product_to_proto(product))

    async def GetProduct(
        self, request: product_pb2.GetProductRequest, context: Context
    ) -> product_pb2.GetProductResponse:
        product = await self._catalogue.get(request.id)
        return product_pb2.GetProductResponse(product=product_to_proto(product))

    async def ListProducts(
        self, request: product_pb2.ListProductsRequest, context: Context
    ) -> product_pb2.ListProductsResponse:
        size = request.page_size if request.HasField("page_size") else None
        rows, next_token = await self._catalogue.list_page(size, request.page_token)
        return product_pb2.ListProductsResponse(
            products=[product_to_proto(p) for p in rows], next_page_token=next_token
        )

    async def UpdateProduct(
        self, request: product_pb2.UpdateProductRequest, context: Context
    ) -> product_pb2.UpdateProductResponse:
        require_admin()
        product = await self._catalogue.update(request.product.id, changes_from_proto(request))
        return product_pb2.UpdateProductResponse(product=product_to_proto(product))

    async def BatchGetProducts(
        self, request: product_pb2.BatchGetProductsRequest, context: Context
    ) -> product_pb2.BatchGetProductsResponse:
        products = await self._catalogue.get_many(list(request.ids))
        return product_pb2.BatchGetProductsResponse(
            products=[product_to_proto(p) for p in products]
        )


class ProductInternalServicer(product_internal_pb2_grpc.ProductInternalServiceServicer):
    def __init__(self, reservations: Reservations) -> None:
        self._reservations = reservations

    async def ReserveStock(
        self, request: product_internal_pb2.ReserveStockRequest, context: Context
    ) -> product_internal_pb2.ReserveStockResponse:
        reserved = await self._reservations.reserve(
            request.reservation_id, items_from_proto(request.items)
        )
        return product_internal_pb2.ReserveStockResponse(
            reservation=reservation_to_proto(reserved.reservation),
            products=[
                reserved_product_to_proto(reserved.products[i.product_id]) for i in request.items
            ],
        )

    async def ReleaseStock(
        self, request: product_internal_pb2.ReleaseStockRequest, context: Context
    ) -> product_internal_pb2.ReleaseStockResponse:
        reservation, released = await self._reservations.release(request.reservation_id)
        return product_internal_pb2.ReleaseStockResponse(
            reservation=reservation_to_proto(reservation), released=released
        )
