"""The payment service's tables (payments, one per order; and the simulated provider's
charges) and the small domain types and exceptions its use cases, repository and
provider share."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import BigInteger, CheckConstraint, DateTime, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from services.common.db import Base, new_metadata

# A payment's states (PaymentState in the contract).
AUTHORIZED = "AUTHORIZED"
CAPTURED = "CAPTURED"
VOIDED = "VOIDED"
REFUNDED = "REFUNDED"
DECLINED = "DECLINED"
# The provider did not answer: whether it charged is not known until the charge is
# looked up (Authorize again does).
FAILED = "FAILED"

# Why a payment is DECLINED (the provider's decline codes) or FAILED.
CARD_DECLINED = "card_declined"
INSUFFICIENT_FUNDS = "insufficient_funds"
PROVIDER_TIMEOUT = "provider_timeout"
PROVIDER_ERROR = "provider_error"


class PaymentBase(Base):
    __abstract__ = True
    metadata = new_metadata()


class PaymentRow(PaymentBase):
    """The payment of one order (order_id is unique: the payment's idempotency key)."""

    __tablename__ = "payments"
    __table_args__ = (
        CheckConstraint("amount_minor > 0", name="amount_positive"),
        # One user's payments, newest first (ids sort by creation time).
        Index("ix_payments_user_id_id", "user_id", "id"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    order_id: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[str] = mapped_column(String(64))
    amount_currency: Mapped[str] = mapped_column(String(3))
    amount_minor: Mapped[int] = mapped_column(BigInteger)
    payment_method: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16))
    provider_reference: Mapped[str] = mapped_column(String(64))
    failure_reason: Mapped[str] = mapped_column(String(64))
    refund_request_id: Mapped[str] = mapped_column(String(128))
    refund_reason: Mapped[str] = mapped_column(String(500))
    create_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    update_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ProviderChargeRow(PaymentBase):
    """A charge as the simulated provider (provider.py) keeps it, by the idempotency key
    it was asked under. A real provider keeps these on its side; the simulation keeps
    them in the payment database, so they survive restarts like a provider's would."""

    __tablename__ = "provider_charges"
    __table_args__ = (CheckConstraint("amount_minor > 0", name="amount_positive"),)

    idempotency_key: Mapped[str] = mapped_column(String(128), primary_key=True)
    reference: Mapped[str] = mapped_column(String(64), unique=True)
    payment_method: Mapped[str] = mapped_column(String(64))
    amount_currency: Mapped[str] = mapped_column(String(3))
    amount_minor: Mapped[int] = mapped_column(BigInteger)
    # AUTHORIZED, CAPTURED, VOIDED, REFUNDED, or DECLINED (with its decline code).
    state: Mapped[str] = mapped_column(String(16))
    decline_code: Mapped[str] = mapped_column(String(64))
    refund_key: Mapped[str] = mapped_column(String(128))
    create_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    update_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))


@dataclass(frozen=True)
class Amount:
    """Money in integer minor units of one currency."""

    currency_code: str
    amount_minor: int


@dataclass(frozen=True)
class PaymentRequest:
    """What an Authorize asks for; a repeat for the same order must ask the same."""

    order_id: str
    user_id: str
    amount: Amount
    payment_method: str


class PaymentExists(Exception):
    """The order already has a payment (perhaps written by a concurrent twin)."""

    def __init__(self, payment: PaymentRow) -> None:
        super().__init__(payment.order_id)
        self.payment = payment
