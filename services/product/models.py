"""The product service's tables (products, and the stock reservations taken from them) and
the small domain types and exceptions its use cases and repository share."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import BigInteger, CheckConstraint, DateTime, ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column, relationship

from services.common.db import Base, new_metadata

RESERVED = "RESERVED"
RELEASED = "RELEASED"


class ProductBase(Base):
    __abstract__ = True
    metadata = new_metadata()


class ProductRow(ProductBase):
    __tablename__ = "products"
    __table_args__ = (CheckConstraint("stock >= 0", name="stock_not_negative"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(String(4000))
    price_currency: Mapped[str] = mapped_column(String(3))
    price_amount_minor: Mapped[int] = mapped_column(BigInteger)
    stock: Mapped[int]
    create_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    update_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ReservationRow(ProductBase):
    """One ReserveStock call, keyed by the caller's reservation id.

    A RELEASED row with no items is a tombstone: the id was released before it
    was ever reserved, so a late reservation under it must be refused.
    """

    __tablename__ = "reservations"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    state: Mapped[str] = mapped_column(String(16))
    create_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    release_time: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    items: Mapped[list[ReservationItemRow]] = relationship(
        lazy="selectin", order_by="ReservationItemRow.product_id"
    )


class ReservationItemRow(ProductBase):
    __tablename__ = "reservation_items"
    __table_args__ = (CheckConstraint("quantity > 0", name="quantity_positive"),)

    reservation_id: Mapped[str] = mapped_column(ForeignKey("reservations.id"), primary_key=True)
    product_id: Mapped[str] = mapped_column(ForeignKey("products.id"), primary_key=True, index=True)
    quantity: Mapped[int]


@dataclass(frozen=True)
class Price:
    currency_code: str
    amount_minor: int


@dataclass(frozen=True)
class ProductDraft:
    """A product to create, as the caller described it."""

    name: str
    description: str
    price: Price
    stock: int


@dataclass(frozen=True)
class ReservedProduct:
    """What a caller records of a product it reserved: its name and price then."""

    id: str
    name: str
    price: Price

    @classmethod
    def of(cls, product: ProductRow) -> ReservedProduct:
        return cls(
            product.id, product.name, Price(product.price_currency, product.price_amount_minor)
        )


@dataclass(frozen=True)
class Reserved:
    """A reservation made, and its products by id, named and priced as it took them:
    what the caller prices its order with."""

    reservation: ReservationRow
    products: Mapping[str, ReservedProduct]


class ReservationExists(Exception):
    """The reservation id is already taken (perhaps by a concurrent twin): nothing was taken."""

    def __init__(self, reservation: ReservationRow) -> None:
        super().__init__(reservation.id)
        self.reservation = reservation


class UnknownProducts(Exception):
    """Some items name no product: nothing was taken."""

    def __init__(self, product_ids: Sequence[str]) -> None:
        super().__init__(*product_ids)
        self.product_ids = list(product_ids)


class InsufficientStock(Exception):
    """Some items have less stock than asked for: nothing was taken."""

    def __init__(self, product_ids: Sequence[str]) -> None:
        super().__init__(*product_ids)
        self.product_ids = list(product_ids)


class ReservationInFlight(Exception):
    """A release met a reservation of its id whose transaction was still open (its
    tombstone could not be written); once that commits, a new try finds it."""

    def __init__(self, reservation_id: str) -> None:
        super().__init__(reservation_id)
        self.reservation_id = reservation_id
