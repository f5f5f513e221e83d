"""Builds the product service from the platform, explicitly and in order."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

from services.common.server import Platform, Servicer, ServiceSpec, Wired
from services.product.handlers import ProductInternalServicer, ProductServicer
from services.product.repository import SqlProductRepository
from services.product.usecases import Catalogue, Reservations
from shop.product.v1 import (
    product_internal_pb2,
    product_internal_pb2_grpc,
    product_pb2,
    product_pb2_grpc,
)


@dataclass(frozen=True)
class ProductParts:
    catalogue: Catalogue
    reservations: Reservations


async def wire(platform: Platform) -> Wired[ProductParts]:
    repository = SqlProductRepository(platform.db)
    catalogue = Catalogue(repository, platform.page_tokens)
    reservations = Reservations(repository)
    # Seconds a released reservation (or tombstone) is kept (RESERVATION_RETENTION): far
    # longer than any order attempt that could still send a ReserveStock under its id.
    retention = platform.config.reservation_retention
    return Wired(
        parts=ProductParts(catalogue, reservations),
        servicers=[
            Servicer(
                product_pb2.DESCRIPTOR.services_by_name["ProductService"],
                ProductServicer(catalogue),
                product_pb2_grpc.add_ProductServiceServicer_to_server,
            ),
            Servicer(
                product_internal_pb2.DESCRIPTOR.services_by_name["ProductInternalService"],
                ProductInternalServicer(reservations),
                product_internal_pb2_grpc.add_ProductInternalServiceServicer_to_server,
            ),
        ],
        background=[partial(reservations.run_purge, retention)],
    )


SPEC = ServiceSpec(name="product", migrations=Path(__file__).parent / "migrations", wire=wire)
