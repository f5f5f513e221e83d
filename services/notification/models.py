"""The notification service's tables (notifications, its consumer bookkeeping) and the
small domain types and exceptions its use cases and repository share."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import grpc
from sqlalchemy import BigInteger, DateTime, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from services.common.db import Base, new_metadata
from services.common.errors import DomainError
from services.common.events.consumer import PositionMixin, ProcessedEventMixin

ORDER_PLACED = "ORDER_PLACED"
ORDER_CANCELLED = "ORDER_CANCELLED"
PAYMENT_REFUNDED = "PAYMENT_REFUNDED"
PAYMENT_FAILED = "PAYMENT_FAILED"
# Why a payment failed (a PAYMENT_FAILED event's `failure`).
DECLINED = "DECLINED"
UNAVAILABLE = "UNAVAILABLE"


class NotificationBase(Base):
    __abstract__ = True
    metadata = new_metadata()


class NotificationRow(NotificationBase):
    __tablename__ = "notifications"
    __table_args__ = (
        # One notification per user and event, however often the event arrives.
        UniqueConstraint("event_id", "user_id"),
        UniqueConstraint("user_id", "user_seq"),
    )

    # Insertion order over all users (the primary key).
    seq: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    # The user's own sequence, in commit order: what stream cursors and page tokens
    # point into (see UserSequenceRow).
    user_seq: Mapped[int] = mapped_column(BigInteger)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(32))
    title: Mapped[str] = mapped_column(String(200))
    body: Mapped[str] = mapped_column(String(1000))
    order_id: Mapped[str] = mapped_column(String(64))
    event_id: Mapped[str] = mapped_column(String(64))
    read: Mapped[bool]
    create_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    read_time: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class UserSequenceRow(NotificationBase):
    """The last `user_seq` given to each user's notifications. Taking the next one
    locks the user's row until the storing transaction ends, so one user's
    notifications commit in the order of their numbers, on any number of replicas."""

    __tablename__ = "user_sequences"

    user_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    last_seq: Mapped[int] = mapped_column(BigInteger)


class ProcessedEventRow(NotificationBase, ProcessedEventMixin):
    __tablename__ = "processed_events"


class ConsumerPositionRow(NotificationBase, PositionMixin):
    __tablename__ = "consumer_positions"


@dataclass(frozen=True)
class OrderEvent:
    """An event of the order service (about an order or its payment) as the use cases
    need it (read from the order service's contract by order_events.parse), whatever
    transport delivered it."""

    event_id: str
    # The notification it makes: ORDER_PLACED, ORDER_CANCELLED, PAYMENT_REFUNDED or
    # PAYMENT_FAILED.
    kind: str
    # For PAYMENT_FAILED, the id the failed attempt had.
    order_id: str
    user_id: str
    item_count: int
    # The order's total; for a payment event, the amount refunded or not charged.
    total_minor: int
    currency: str
    # Why the order was cancelled (ORDER_CANCELLED, PAYMENT_REFUNDED).
    cancel_reason: str = ""
    # PAYMENT_REFUNDED: the hold was released (never captured) rather than refunded.
    voided: bool = False
    # PAYMENT_FAILED: DECLINED (with the provider's decline code) or UNAVAILABLE.
    failure: str = ""
    decline_code: str = ""


class UnknownNotifications(Exception):
    """Some of the ids name none of the user's notifications (nothing was changed)."""

    def __init__(self, ids: Sequence[str]) -> None:
        super().__init__(", ".join(ids))
        self.ids = list(ids)


class TooManyStreams(DomainError):
    """This replica holds as many open streams as it may (MAX_STREAMS)."""

    def __init__(self) -> None:
        super().__init__(
            "too many open notification streams; retry later",
            "TOO_MANY_STREAMS",
            code=grpc.StatusCode.RESOURCE_EXHAUSTED,
        )
