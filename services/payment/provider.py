"""The payment provider adapter: what the use cases ask of a provider (`PaymentProvider`),
and `SimulatedProvider`, a deterministic one for development and tests.

Every call the use cases make is safe to repeat: an authorization is made under an
idempotency key (the payment service uses the order id), so asking twice never charges
twice, and `find` looks a charge up by that key when an earlier call's answer was lost
(a timeout, an error after the charge went through).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy import bindparam, select, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.exc import IntegrityError

from services.common.db import Database
from services.common.ids import new_id
from services.common.times import utcnow
from services.payment.models import (
    AUTHORIZED,
    CAPTURED,
    CARD_DECLINED,
    DECLINED,
    INSUFFICIENT_FUNDS,
    PROVIDER_ERROR,
    PROVIDER_TIMEOUT,
    REFUNDED,
    VOIDED,
    Amount,
    ProviderChargeRow,
)


@dataclass(frozen=True)
class Approved:
    """The provider holds the amount: `reference` is its id of the charge."""

    reference: str


@dataclass(frozen=True)
class Declined:
    """The provider refused the payment method; `code` says why (CARD_DECLINED,
    INSUFFICIENT_FUNDS)."""

    code: str
    reference: str = ""


Outcome = Approved | Declined


class ProviderUnavailable(Exception):
    """The provider did not answer in time (PROVIDER_TIMEOUT) or failed (PROVIDER_ERROR):
    whether the call took effect is not known, so the caller looks it up or repeats it."""

    def __init__(self, cause: str) -> None:
        super().__init__(cause)
        self.cause = cause


class ChargeConflict(Exception):
    """The charge is not in a state that allows the call (voiding a captured charge, say),
    or there is no charge of that reference (state "")."""

    def __init__(self, reference: str, state: str) -> None:
        super().__init__(f"charge {reference} is {state or 'unknown'}")
        self.reference = reference
        self.state = state


class PaymentProvider(Protocol):
    def supports(self, payment_method: str) -> bool:
        """Whether the provider knows the payment method."""
        ...

    async def authorize(self, key: str, amount: Amount, payment_method: str) -> Outcome:
        """Holds `amount` on the payment method under the idempotency key `key`: asking
        again under the same key answers the first outcome and charges nothing more.
        Raises ProviderUnavailable."""
        ...

    async def find(self, key: str) -> Outcome | None:
        """The outcome of the authorization made under `key`, or None when there was none
        (so asking again charges once). Raises ProviderUnavailable."""
        ...

    async def capture(self, reference: str) -> None:
        """Takes the held amount; a no-op on a captured charge. Raises ChargeConflict,
        ProviderUnavailable."""
        ...

    async def void(self, reference: str) -> None:
        """Gives the hold back; a no-op on a voided charge. Raises ChargeConflict,
        ProviderUnavailable."""
        ...

    async def refund(self, reference: str, key: str) -> None:
        """Gives a captured amount back in full, under the idempotency key `key`; a no-op
        on a refunded charge. Raises ChargeConflict, ProviderUnavailable."""
        ...


# What the simulated provider does with each of its test payment methods.
APPROVE = "approve"
DECLINE = "decline"
DECLINE_FUNDS = "insufficient_funds"
TIMEOUT = "timeout"  # charges, then never answers: the call ends as a timeout
ERROR = "error"  # fails before charging
ERROR_AFTER_CHARGE = "error_after_charge"  # charges, then the call fails

TEST_METHODS = {
    "card_approve": APPROVE,
    "card_decline": DECLINE,
    "card_insufficient_funds": DECLINE_FUNDS,
    "card_timeout": TIMEOUT,
    "card_error": ERROR,
    "card_error_after_charge": ERROR_AFTER_CHARGE,
}
DECLINE_CODES = {DECLINE: CARD_DECLINED, DECLINE_FUNDS: INSUFFICIENT_FUNDS}
# Who charges before its answer is lost, and how the loss looks to the caller.
LOST_ANSWERS = {TIMEOUT: PROVIDER_TIMEOUT, ERROR_AFTER_CHARGE: PROVIDER_ERROR}

CHARGES = ProviderChargeRow.__table__
CHARGE_BY_KEY = select(CHARGES).where(CHARGES.c.idempotency_key == bindparam("key"))


def outcome_of(charge: ProviderChargeRow) -> Outcome:
    if charge.state == DECLINED:
        return Declined(charge.decline_code, charge.reference)
    return Approved(charge.reference)


class SimulatedProvider:
    """A deterministic provider: the payment method decides the outcome (TEST_METHODS).
    Its charges are rows of the payment database (`provider_charges`), so they survive
    restarts, and every call is idempotent like a real provider's. Each call takes
    `latency` seconds first (PAYMENT_PROVIDER_LATENCY_MS)."""

    def __init__(self, db: Database, latency: float = 0.0) -> None:
        self._db = db
        self._latency = latency

    def supports(self, payment_method: str) -> bool:
        return payment_method in TEST_METHODS

    async def authorize(self, key: str, amount: Amount, payment_method: str) -> Outcome:
        await self._wait()
        existing = await self._by_key(key)
        if existing is not None:
            return outcome_of(existing)  # a repeat: the first answer, nothing charged
        behaviour = TEST_METHODS[payment_method]
        if behaviour == ERROR:
            raise ProviderUnavailable(PROVIDER_ERROR)
        now = utcnow()
        charge = ProviderChargeRow(
            idempotency_key=key,
            reference=new_id("ch"),
            payment_method=payment_method,
            amount_currency=amount.currency_code,
            amount_minor=amount.amount_minor,
            state=DECLINED if behaviour in DECLINE_CODES else AUTHORIZED,
            decline_code=DECLINE_CODES.get(behaviour, ""),
            refund_key="",
            create_time=now,
            update_time=now,
        )
        try:
            async with self._db.write() as session:
                session.add(charge)
        except IntegrityError:
            # The same key was charged concurrently: that charge is the answer.
            existing = await self._by_key(key)
            if existing is None:
                raise
            return outcome_of(existing)
        if behaviour in LOST_ANSWERS:
            raise ProviderUnavailable(LOST_ANSWERS[behaviour])
        return outcome_of(charge)

    async def find(self, key: str) -> Outcome | None:
        await self._wait()
        charge = await self._by_key(key)
        return None if charge is None else outcome_of(charge)

    async def capture(self, reference: str) -> None:
        await self._move(reference, AUTHORIZED, CAPTURED)

    async def void(self, reference: str) -> None:
        await self._move(reference, AUTHORIZED, VOIDED)

    async def refund(self, reference: str, key: str) -> None:
        await self._move(reference, CAPTURED, REFUNDED, refund_key=key)

    async def _move(self, reference: str, source: str, target: str, **values: str) -> None:
        """source -> target in one conditional UPDATE; a charge already at target is left
        as it is (a repeat), any other state is a ChargeConflict."""
        await self._wait()
        async with self._db.write() as session:
            result = await session.execute(
                update(ProviderChargeRow)
                .where(ProviderChargeRow.reference == reference, ProviderChargeRow.state == source)
                .values(state=target, update_time=utcnow(), **values)
                .execution_options(synchronize_session=False)
            )
            assert isinstance(result, CursorResult)
            if result.rowcount == 1:
                return
            state = await session.scalar(
                select(ProviderChargeRow.state).where(ProviderChargeRow.reference == reference)
            )
        if state != target:
            raise ChargeConflict(reference, state or "")

    async def _by_key(self, key: str) -> ProviderChargeRow | None:
        row = await self._db.read_one(CHARGE_BY_KEY, {"key": key})
        return None if row is None else ProviderChargeRow(**row)

    async def _wait(self) -> None:
        if self._latency > 0:
            await asyncio.sleep(self._latency)
