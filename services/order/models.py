"""The order service's tables (orders, their items, the outbox of their events, the
replica of users' statuses and its consumer's bookkeeping) and its small domain types."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import BigInteger, DateTime, ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column, relationship

from services.common.db import Base, new_metadata
from services.common.events.consumer import PositionMixin, ProcessedEventMixin
from services.common.events.outbox import OutboxMixin

# PENDING: the idempotency key is claimed and the flow is under way (never shown to
# clients). FAILED: the flow failed and its reservation is being released; the row is
# deleted once it is, freeing the key. PLACED and CANCELLED are the public states.
PENDING = "PENDING"
PLACED = "PLACED"
CANCELLED = "CANCELLED"
FAILED = "FAILED"
# What clients may see of an order; the other states are an attempt's inner workings.
VISIBLE = (PLACED, CANCELLED)

# An order's payment as the order service must still act on it (the payment service
# holds the payment itself, one per order id). NONE: nothing to do (an attempt before it
# authorized, or one whose payment was declined; an order placed before payments).
# VOIDING: a FAILED attempt whose authorization (if any) is still to be voided: the
# attempt's own compensation asks it, or the sweeper (a stale attempt may have
# authorized, so the sweeper voids it). AUTHORIZED: PLACED with the money held; the
# capture follows at once, and the sweeper repeats it if it failed. CAPTURED: paid.
# REFUNDING: CANCELLED, its payment still to be given back (the sweeper retries);
# REFUNDED: given back (refunded, or voided if it was never captured).
PAYMENT_NONE = "NONE"
PAYMENT_VOIDING = "VOIDING"
PAYMENT_AUTHORIZED = "AUTHORIZED"
PAYMENT_CAPTURED = "CAPTURED"
PAYMENT_REFUNDING = "REFUNDING"
PAYMENT_REFUNDED = "REFUNDED"
# What the order service uses when the request names no payment method (the simulated
# provider's method that approves).
DEFAULT_PAYMENT_METHOD = "card_approve"


class OrderBase(Base):
    __abstract__ = True
    metadata = new_metadata()


class OrderRow(OrderBase):
    __tablename__ = "orders"
    __table_args__ = (Index("ix_orders_user_id_id", "user_id", "id"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), index=True)
    idempotency_key: Mapped[str] = mapped_column(String(128), unique=True)
    # sha256 of the request (user and items), to tell a retry from a reused key.
    request_fingerprint: Mapped[str] = mapped_column(String(64))
    reservation_id: Mapped[str] = mapped_column(String(128))
    currency_code: Mapped[str] = mapped_column(String(3))
    total_amount_minor: Mapped[int] = mapped_column(BigInteger)
    cancel_reason: Mapped[str] = mapped_column(String(500))
    # False while the reservation of a cancelled or failed order still has to be released.
    stock_released: Mapped[bool]
    # PAYMENT_*: what is still to be done about the order's payment (migration 0002).
    # Indexed: the sweeper looks up the few orders AUTHORIZED (capture failed) or REFUNDING.
    payment_state: Mapped[str] = mapped_column(String(16), server_default=PAYMENT_NONE, index=True)
    create_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    update_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    items: Mapped[list[OrderItemRow]] = relationship(
        lazy="selectin", order_by="OrderItemRow.position", cascade="all, delete-orphan"
    )


class OrderItemRow(OrderBase):
    __tablename__ = "order_items"

    order_id: Mapped[str] = mapped_column(ForeignKey("orders.id"), primary_key=True)
    product_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    # Keeps the items in the order the client listed them.
    position: Mapped[int]
    product_name: Mapped[str] = mapped_column(String(200))
    quantity: Mapped[int]
    unit_amount_minor: Mapped[int] = mapped_column(BigInteger)
    line_amount_minor: Mapped[int] = mapped_column(BigInteger)


class OutboxRow(OrderBase, OutboxMixin):
    __tablename__ = "outbox"


class UserStatusRow(OrderBase):
    """Whether a user is active, as the user service's events last said
    (UserStatusChanged of the highest version seen)."""

    __tablename__ = "user_statuses"

    user_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    active: Mapped[bool]
    version: Mapped[int] = mapped_column(BigInteger)


class ProcessedEventRow(OrderBase, ProcessedEventMixin):
    __tablename__ = "processed_events"


class ConsumerPositionRow(OrderBase, PositionMixin):
    __tablename__ = "consumer_positions"


@dataclass(frozen=True)
class Line:
    """One line of an order as the client asked for it."""

    product_id: str
    quantity: int


@dataclass(frozen=True)
class PricedProduct:
    """What an order needs of a product: its name and its price now."""

    id: str
    name: str
    currency_code: str
    amount_minor: int


# Why an attempt's payment failed, as its PaymentFailed event says.
PAYMENT_DECLINED = "DECLINED"
PAYMENT_UNAVAILABLE = "UNAVAILABLE"


@dataclass(frozen=True)
class PaymentFailure:
    """Why an order attempt was given up at its payment: PAYMENT_DECLINED (with the
    provider's decline code) or PAYMENT_UNAVAILABLE; the method it tried."""

    kind: str
    payment_method: str
    decline_code: str = ""


class KeyTaken(Exception):
    """Another attempt claimed the idempotency key first (the unique constraint said so)."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key
