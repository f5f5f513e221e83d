"""The product service's one place where stored products and reservations become protos,
and where request protos become the use cases' inputs."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from services.common import fieldmask
from services.common.times import to_timestamp
from services.product.models import (
    RELEASED,
    Price,
    ProductDraft,
    ProductRow,
    ReservationRow,
    ReservedProduct,
)
from services.product.usecases import UPDATABLE
from shop.common.v1 import money_pb2
from shop.product.v1 import product_internal_pb2, product_pb2


def product_to_proto(product: ProductRow) -> product_pb2.Product:
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


def reserved_product_to_proto(product: ReservedProduct) -> product_internal_pb2.ReservedProduct:
    return product_internal_pb2.ReservedProduct(
        product_id=product.id,
        name=product.name,
        price=money_pb2.Money(
            currency_code=product.price.currency_code, amount_minor=product.price.amount_minor
        ),
    )


def price_from_proto(money: money_pb2.Money) -> Price:
    return Price(currency_code=money.currency_code, amount_minor=money.amount_minor)


def draft_from_proto(request: product_pb2.CreateProductRequest) -> ProductDraft:
    return ProductDraft(
        name=request.name,
        description=request.description,
        price=price_from_proto(request.price),
        stock=request.stock,
    )


def changes_from_proto(request: product_pb2.UpdateProductRequest) -> dict[str, Any]:
    """The masked fields of UPDATABLE, the price as a `Price`."""
    changes = fieldmask.changes(request.update_mask, request.product, UPDATABLE)
    if "price" in changes:
        changes["price"] = price_from_proto(changes["price"])
    return changes


def items_from_proto(items: Iterable[product_internal_pb2.StockItem]) -> dict[str, int]:
    return {item.product_id: item.quantity for item in items}
