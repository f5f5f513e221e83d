"""Payment use cases: one payment per order, authorized, captured, voided and refunded
through the provider, every step idempotent on the order id; and the owner's reads.

The provider is asked first and the payment recorded after, as the provider answered.
Every provider call is safe to repeat (an authorization is made under the order id as
its idempotency key), so a step whose answer was lost is simply asked again: a FAILED
payment (the provider timed out or failed) is first looked up at the provider by that
key, which finds a charge that went through, and is never charged twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from services.common.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from services.common.ids import new_id
from services.common.pagination import PageTokens, page_size
from services.common.times import utcnow
from services.payment.models import (
    AUTHORIZED,
    CAPTURED,
    DECLINED,
    FAILED,
    REFUNDED,
    VOIDED,
    PaymentExists,
    PaymentRequest,
    PaymentRow,
)
from services.payment.provider import (
    Approved,
    ChargeConflict,
    Outcome,
    PaymentProvider,
    ProviderUnavailable,
)
from services.payment.repository import PaymentRepository

log = logging.getLogger("shop.payment")

# ErrorInfo reasons of the contract (proto/shop/payment/v1/payment_internal.proto).
PAYMENT_DECLINED = "PAYMENT_DECLINED"
PAYMENT_MISMATCH = "PAYMENT_MISMATCH"
PAYMENT_NOT_AUTHORIZED = "PAYMENT_NOT_AUTHORIZED"
PAYMENT_NOT_CAPTURED = "PAYMENT_NOT_CAPTURED"
PAYMENT_PROVIDER_UNAVAILABLE = "PAYMENT_PROVIDER_UNAVAILABLE"
# How many captures of one CapturePayments call run at once (database connections and
# the provider's calls, shared with the other RPCs).
CAPTURES_AT_ONCE = 8


class Payments:
    def __init__(
        self, repository: PaymentRepository, provider: PaymentProvider, page_tokens: PageTokens
    ) -> None:
        self._repository = repository
        self._provider = provider
        self._tokens = page_tokens

    # -- reading -------------------------------------------------------------

    async def get(self, payment_id: str) -> PaymentRow:
        payment = await self._repository.get(payment_id)
        if payment is None:
            raise NotFound("payment", payment_id)
        return payment

    async def list_page(
        self, user_id: str, order_id: str | None, requested_size: int | None, token: str
    ) -> tuple[Sequence[PaymentRow], str]:
        """One user's payments (of one order, when `order_id` is given), newest first."""
        size = page_size(requested_size)
        query_key = f"user={user_id}&order={order_id or ''}"
        before = self._tokens.decode(token, query_key)
        rows = await self._repository.page(user_id, order_id or None, before, size + 1)
        return self._tokens.page(rows, size, key=lambda row: row.id, query=query_key)

    # -- the order service's steps ------------------------------------------------

    async def authorize(self, request: PaymentRequest) -> PaymentRow:
        """The order's payment, AUTHORIZED (or further along, for a repeat): made once,
        whatever the number of calls. A decline raises PAYMENT_DECLINED (every repeat
        too); a provider that does not answer, PAYMENT_PROVIDER_UNAVAILABLE."""
        if not self._provider.supports(request.payment_method):
            raise InvalidArgument.of(
                "payment_method",
                f"unknown payment method {request.payment_method!r}",
                "payment_method.unknown",
            )
        existing = await self._repository.by_order(request.order_id)
        if existing is None:
            try:
                outcome = await self._provider.authorize(
                    request.order_id, request.amount, request.payment_method
                )
            except ProviderUnavailable as lost:
                # Recorded, so that the owner sees it and a retry looks the charge up.
                await self._add_or_keep(_new_payment(request, FAILED, failure_reason=lost.cause))
                raise _unavailable(request.order_id, lost) from None
            payment = _new_payment(request, **_recorded(outcome))
            try:
                await self._repository.add(payment)
            except PaymentExists as taken:  # a concurrent twin recorded the same charge
                existing = taken.payment
            else:
                return _authorized(payment)
        _check_same(existing, request)
        if existing.state == FAILED:
            existing = await self._complete(existing, request)
        return _authorized(existing)

    async def capture(self, order_id: str) -> PaymentRow:
        """Takes the held amount: AUTHORIZED -> CAPTURED (a CAPTURED payment is returned)."""
        payment, _ = await self._step(
            order_id,
            AUTHORIZED,
            CAPTURED,
            lambda p: self._provider.capture(p.provider_reference),
            PAYMENT_NOT_AUTHORIZED,
            "captured",
        )
        return payment

    async def capture_all(self, order_ids: Sequence[str]) -> list[PaymentRow | None]:
        """`capture` of each order's payment, side by side; each one's payment after it
        (None: the order has none). One that can't be captured does not fail the others:
        its payment is returned as it is (VOIDED, ...; still AUTHORIZED when the provider
        did not answer)."""
        turns = asyncio.Semaphore(CAPTURES_AT_ONCE)
        return list(await asyncio.gather(*(self._capture_or_keep(o, turns) for o in order_ids)))

    async def _capture_or_keep(self, order_id: str, turns: asyncio.Semaphore) -> PaymentRow | None:
        try:
            async with turns:
                return await self.capture(order_id)
        except NotFound:
            return None
        except (FailedPrecondition, Unavailable):
            return await self._repository.by_order(order_id)

    async def void(self, order_id: str) -> PaymentRow:
        """Gives the hold back: AUTHORIZED -> VOIDED (a VOIDED payment is returned)."""
        payment, _ = await self._step(
            order_id,
            AUTHORIZED,
            VOIDED,
            lambda p: self._provider.void(p.provider_reference),
            PAYMENT_NOT_AUTHORIZED,
            "voided",
        )
        return payment

    async def refund(self, order_id: str, request_id: str, reason: str) -> tuple[PaymentRow, bool]:
        """Gives the captured amount back in full: CAPTURED -> REFUNDED, once per order;
        True for the call that did. A later refund of the order (under any request id)
        returns that same refund, False."""
        return await self._step(
            order_id,
            CAPTURED,
            REFUNDED,
            lambda p: self._provider.refund(p.provider_reference, request_id),
            PAYMENT_NOT_CAPTURED,
            "refunded",
            {"refund_request_id": request_id, "refund_reason": reason},
        )

    # -- the steps' parts ------------------------------------------------------------

    async def _complete(self, payment: PaymentRow, request: PaymentRequest) -> PaymentRow:
        """A FAILED payment authorized again: the charge an earlier call may have made is
        looked up first; only when there is none is the provider asked again (under the
        same key, so even then it charges at most once)."""
        try:
            outcome = await self._provider.find(payment.order_id)
            if outcome is None:
                outcome = await self._provider.authorize(
                    payment.order_id, request.amount, request.payment_method
                )
        except ProviderUnavailable as lost:
            await self._repository.transition(
                payment.id, {FAILED}, {"failure_reason": lost.cause, "update_time": utcnow()}
            )
            raise _unavailable(payment.order_id, lost) from None
        return await self._settle(payment, outcome)

    async def _resolved(self, payment: PaymentRow) -> PaymentRow:
        """The payment, with a FAILED one settled if the provider has its charge (a
        capture or void of it then goes on as for any authorized payment)."""
        if payment.state != FAILED:
            return payment
        try:
            outcome = await self._provider.find(payment.order_id)
        except ProviderUnavailable as lost:
            raise _unavailable(payment.order_id, lost) from None
        return payment if outcome is None else await self._settle(payment, outcome)

    async def _settle(self, payment: PaymentRow, outcome: Outcome) -> PaymentRow:
        values = {**_recorded(outcome), "update_time": utcnow()}
        settled = await self._repository.transition(payment.id, {FAILED}, values)
        if settled is not None:
            log.info(
                "failed payment settled from the provider's charge",
                extra={"payment_id": payment.id, "state": settled.state},
            )
            return settled
        return await self.get(payment.id)  # settled concurrently

    async def _step(
        self,
        order_id: str,
        source: str,
        target: str,
        call: Callable[[PaymentRow], Awaitable[None]],
        reason: str,
        verb: str,
        values: Mapping[str, Any] | None = None,
    ) -> tuple[PaymentRow, bool]:
        """source -> target at the provider, then in the payment: the provider first, so
        the payment only says what the provider did. A payment already at target is
        returned as it is (False)."""
        payment = await self._repository.by_order(order_id)
        if payment is None:
            raise NotFound("payment", order_id)
        payment = await self._resolved(payment)
        if payment.state == target:
            return payment, False
        if payment.state != source:
            raise _wrong_state(payment, payment.state, source, reason, verb)
        try:
            await call(payment)
        except ChargeConflict as conflict:  # moved on at the provider by a concurrent call
            raise _wrong_state(payment, conflict.state, source, reason, verb) from None
        except ProviderUnavailable as lost:
            raise _unavailable(order_id, lost) from None
        changes = {"state": target, "update_time": utcnow(), **(values or {})}
        moved = await self._repository.transition(payment.id, {source}, changes)
        if moved is not None:
            return moved, True
        current = await self.get(payment.id)
        if current.state == target:
            return current, False  # a concurrent twin recorded it first
        raise _wrong_state(current, current.state, source, reason, verb)

    async def _add_or_keep(self, payment: PaymentRow) -> None:
        with contextlib.suppress(PaymentExists):  # a concurrent twin's payment stands
            await self._repository.add(payment)


def _new_payment(
    request: PaymentRequest, state: str, *, provider_reference: str = "", failure_reason: str = ""
) -> PaymentRow:
    now = utcnow()
    return PaymentRow(
        id=new_id("pay"),
        order_id=request.order_id,
        user_id=request.user_id,
        amount_currency=request.amount.currency_code,
        amount_minor=request.amount.amount_minor,
        payment_method=request.payment_method,
        state=state,
        provider_reference=provider_reference,
        failure_reason=failure_reason,
        refund_request_id="",
        refund_reason="",
        create_time=now,
        update_time=now,
    )


def _recorded(outcome: Outcome) -> dict[str, str]:
    """The payment's columns that say what the provider answered."""
    if isinstance(outcome, Approved):
        return {"state": AUTHORIZED, "provider_reference": outcome.reference, "failure_reason": ""}
    return {
        "state": DECLINED,
        "provider_reference": outcome.reference,
        "failure_reason": outcome.code,
    }


def _check_same(existing: PaymentRow, request: PaymentRequest) -> None:
    """A repeated Authorize must ask for what the first one asked."""
    if (
        existing.user_id,
        existing.amount_currency,
        existing.amount_minor,
        existing.payment_method,
    ) != (
        request.user_id,
        request.amount.currency_code,
        request.amount.amount_minor,
        request.payment_method,
    ):
        raise AlreadyExists(
            f"order {existing.order_id} already has a payment for another user, amount or"
            " payment method",
            PAYMENT_MISMATCH,
            order_id=existing.order_id,
            payment_id=existing.id,
        )


def _authorized(payment: PaymentRow) -> PaymentRow:
    if payment.state == DECLINED:
        raise FailedPrecondition(
            f"payment {payment.id} was declined ({payment.failure_reason})",
            PAYMENT_DECLINED,
            [f"payment:{payment.id}"],
            payment_id=payment.id,
            order_id=payment.order_id,
            decline_code=payment.failure_reason,
        )
    return payment


def _wrong_state(
    payment: PaymentRow, state: str, source: str, reason: str, verb: str
) -> FailedPrecondition:
    return FailedPrecondition(
        f"payment {payment.id} is {state.lower() or 'unknown'}: only {source.lower()}"
        f" payments can be {verb}",
        reason,
        [f"payment:{payment.id}"],
        payment_id=payment.id,
        order_id=payment.order_id,
        state=state,
    )


def _unavailable(order_id: str, lost: ProviderUnavailable) -> Unavailable:
    log.warning("payment provider unavailable", extra={"order_id": order_id, "cause": lost.cause})
    return Unavailable(
        "the payment provider did not answer; retry with the same order id",
        PAYMENT_PROVIDER_UNAVAILABLE,
        order_id=order_id,
        cause=lost.cause,
    )
