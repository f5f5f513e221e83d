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
from typing import Protocol, cast

from sqlalchemy import Table, bindparam, insert, select, update
from sqlalchemy.exc import IntegrityError

from services.common.db import Database, loaded
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

CHARGES = cast(Table, ProviderChargeRow.__table__)
CHARGE_BY_KEY = select(CHARGES).where(CHARGES.c.idempotency_key == bindparam("key"))
CHARGE_STATE = select(CHARGES.c.state).where(CHARGES.c.reference == bindparam("reference"))
INSERT_CHARGE = insert(CHARGES)
# A charge's conditional move (`_move`), its parameters named apart from the columns it
# sets (a column's own name is reserved for that).
MOVE_CHARGE = (
    update(CHARGES)
    .where(CHARGES.c.reference == bindparam("reference"), CHARGES.c.state == bindparam("source"))
    .values(
        state=bindparam("new_state", type_=CHARGES.c.state.type),
        update_time=bindparam("new_update_time", type_=CHARGES.c.update_time.type),
    )
)
REFUND_CHARGE = MOVE_CHARGE.values(
    refund_key=bindparam("new_refund_key", type_=CHARGES.c.refund_key.type)
)


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
        charge = {
            "idempotency_key": key,
            "reference": new_id("ch"),
            "payment_method": payment_method,
            "amount_currency": amount.currency_code,
            "amount_minor": amount.amount_minor,
            "state": DECLINED if behaviour in DECLINE_CODES else AUTHORIZED,
            "decline_code": DECLINE_CODES.get(behaviour, ""),
            "refund_key": "",
            "create_time": now,
            "update_time": now,
        }
        try:
            await self._db.write_one(INSERT_CHARGE, charge)
        except IntegrityError:
            # The same key was charged concurrently: that charge is the answer.
            existing = await self._by_key(key)
            if existing is None:
                raise
            return outcome_of(existing)
        if behaviour in LOST_ANSWERS:
            raise ProviderUnavailable(LOST_ANSWERS[behaviour])
        return outcome_of(loaded(ProviderChargeRow, charge))

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

    async def _move(
        self, reference: str, source: str, target: str, refund_key: str | None = None
    ) -> None:
        """source -> target in one conditional UPDATE; a charge already at target is left
        as it is (a repeat), any other state is a ChargeConflict."""
        await self._wait()
        params = {
            "reference": reference,
            "source": source,
            "new_state": target,
            "new_update_time": utcnow(),
            "new_refund_key": refund_key,
        }
        statement = MOVE_CHARGE if refund_key is None else REFUND_CHARGE
        if await self._db.write_one(statement, params) == 1:
            return
        row = await self._db.read_one(CHARGE_STATE, {"reference": reference})
        state = "" if row is None else str(row["state"])
        if state != target:
            raise ChargeConflict(reference, state)

    async def _by_key(self, key: str) -> ProviderChargeRow | None:
        return await self._db.read_model(ProviderChargeRow, CHARGE_BY_KEY, {"key": key})

    async def _wait(self) -> None:
        if self._latency > 0:
            await asyncio.sleep(self._latency)
