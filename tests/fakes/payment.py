"""In-memory fakes of the payment service's repository and of its payment provider: the
payment use cases' tests run against them, no database and no network."""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import inspect

from services.common.ids import new_id
from services.payment.models import (
    AUTHORIZED,
    CAPTURED,
    DECLINED,
    PROVIDER_ERROR,
    PROVIDER_TIMEOUT,
    REFUNDED,
    VOIDED,
    Amount,
    PaymentExists,
    PaymentRow,
)
from services.payment.provider import (
    DECLINE_CODES,
    ERROR,
    LOST_ANSWERS,
    TEST_METHODS,
    Approved,
    ChargeConflict,
    Declined,
    Outcome,
    ProviderUnavailable,
)

_COLUMNS = [attribute.key for attribute in inspect(PaymentRow).column_attrs]


def clone(payment: PaymentRow) -> PaymentRow:
    """A copy that shares nothing with `payment`, as a fresh read from a database would be."""
    return PaymentRow(**{name: getattr(payment, name) for name in _COLUMNS})


class InMemoryPayments:
    """The PaymentRepository over a dict."""

    def __init__(self) -> None:
        self.rows: dict[str, PaymentRow] = {}

    async def get(self, payment_id: str) -> PaymentRow | None:
        row = self.rows.get(payment_id)
        return clone(row) if row is not None else None

    async def by_order(self, order_id: str) -> PaymentRow | None:
        found = [row for row in self.rows.values() if row.order_id == order_id]
        return clone(found[0]) if found else None

    async def page(
        self, user_id: str, order_id: str | None, before_id: str | None, limit: int
    ) -> Sequence[PaymentRow]:
        ids = sorted(
            (
                row.id
                for row in self.rows.values()
                if row.user_id == user_id
                and (order_id is None or row.order_id == order_id)
                and (before_id is None or row.id < before_id)
            ),
            reverse=True,
        )
        return [clone(self.rows[i]) for i in ids[:limit]]

    async def add(self, payment: PaymentRow) -> None:
        existing = await self.by_order(payment.order_id)
        if existing is not None:
            raise PaymentExists(existing)
        self.rows[payment.id] = clone(payment)

    async def transition(
        self, payment_id: str, from_states: Collection[str], values: Mapping[str, Any]
    ) -> PaymentRow | None:
        row = self.rows.get(payment_id)
        if row is None or row.state not in from_states:
            return None
        for name, value in values.items():
            setattr(row, name, value)
        return clone(row)


@dataclass
class Charge:
    """A charge as the fake provider keeps it."""

    key: str
    reference: str
    amount: Amount
    payment_method: str
    state: str
    decline_code: str = ""
    refund_key: str = ""


@dataclass
class FakeProvider:
    """The simulated provider's behaviour (TEST_METHODS) in memory, with every call
    recorded and knobs for what a test needs: calls that fail, a pause in authorize."""

    charges: dict[str, Charge] = field(default_factory=dict)
    # ("authorize" | "find" | "capture" | "void" | "refund", key or reference), in order.
    calls: list[tuple[str, str]] = field(default_factory=list)
    # Operations whose next call fails as a timeout, once each listed time.
    fail_next: list[str] = field(default_factory=list)
    # Set: authorize waits for it after recording its call (to line up concurrent calls).
    authorize_gate: asyncio.Event | None = None

    def supports(self, payment_method: str) -> bool:
        return payment_method in TEST_METHODS

    def asked(self, operation: str) -> int:
        return sum(1 for name, _ in self.calls if name == operation)

    def charged(self) -> list[Charge]:
        """The charges that hold or took money (declined attempts are not charges)."""
        return [c for c in self.charges.values() if c.state != DECLINED]

    async def authorize(self, key: str, amount: Amount, payment_method: str) -> Outcome:
        self._call("authorize", key)
        if self.authorize_gate is not None:
            await self.authorize_gate.wait()
        existing = self.charges.get(key)
        if existing is not None:
            return _outcome(existing)
        behaviour = TEST_METHODS[payment_method]
        if behaviour == ERROR:
            raise ProviderUnavailable(PROVIDER_ERROR)
        charge = Charge(
            key,
            new_id("ch"),
            amount,
            payment_method,
            DECLINED if behaviour in DECLINE_CODES else AUTHORIZED,
            DECLINE_CODES.get(behaviour, ""),
        )
        self.charges[key] = charge
        if behaviour in LOST_ANSWERS:
            raise ProviderUnavailable(LOST_ANSWERS[behaviour])
        return _outcome(charge)

    async def find(self, key: str) -> Outcome | None:
        self._call("find", key)
        charge = self.charges.get(key)
        return None if charge is None else _outcome(charge)

    async def capture(self, reference: str) -> None:
        self._call("capture", reference)
        self._move(reference, AUTHORIZED, CAPTURED)

    async def void(self, reference: str) -> None:
        self._call("void", reference)
        self._move(reference, AUTHORIZED, VOIDED)

    async def refund(self, reference: str, key: str) -> None:
        self._call("refund", reference)
        charge = self._move(reference, CAPTURED, REFUNDED)
        charge.refund_key = charge.refund_key or key

    def by_reference(self, reference: str) -> Charge:
        (charge,) = [c for c in self.charges.values() if c.reference == reference]
        return charge

    def _call(self, operation: str, subject: str) -> None:
        self.calls.append((operation, subject))
        if operation in self.fail_next:
            self.fail_next.remove(operation)
            raise ProviderUnavailable(PROVIDER_TIMEOUT)

    def _move(self, reference: str, source: str, target: str) -> Charge:
        found = [c for c in self.charges.values() if c.reference == reference]
        if not found:
            raise ChargeConflict(reference, "")
        charge = found[0]
        if charge.state == source:
            charge.state = target
        elif charge.state != target:
            raise ChargeConflict(reference, charge.state)
        return charge


def _outcome(charge: Charge) -> Outcome:
    if charge.state == DECLINED:
        return Declined(charge.decline_code, charge.reference)
    return Approved(charge.reference)
