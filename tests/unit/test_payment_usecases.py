"""The payment use cases against an in-memory repository and a fake provider: every
outcome of an authorization, idempotency on the order id, the state rules of capture,
void and refund, reading and paging, and (through the handlers) ownership."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest

from services.common.auth import Caller, reset_caller, set_caller
from services.common.config import DEFAULT_PORTS, ServiceConfig
from services.common.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unavailable,
)
from services.common.pagination import PageTokens
from services.payment.handlers import PaymentServicer
from services.payment.models import (
    AUTHORIZED,
    CAPTURED,
    DECLINED,
    FAILED,
    REFUNDED,
    VOIDED,
    Amount,
    PaymentRequest,
    PaymentRow,
)
from services.payment.usecases import Payments
from shop.payment.v1 import payment_pb2
from tests.fakes.payment import FakeProvider, InMemoryPayments


@dataclass
class Shop:
    repository: InMemoryPayments = field(default_factory=InMemoryPayments)
    provider: FakeProvider = field(default_factory=FakeProvider)

    @property
    def payments(self) -> Payments:
        return Payments(self.repository, self.provider, PageTokens("unit-test-secret"))


@pytest.fixture
def shop() -> Shop:
    return Shop()


@pytest.fixture
def payments(shop: Shop) -> Payments:
    return shop.payments


def request(
    order_id: str = "ord_1",
    method: str = "card_approve",
    amount: int = 2598,
    user_id: str = "usr_ann",
    currency: str = "EUR",
) -> PaymentRequest:
    return PaymentRequest(order_id, user_id, Amount(currency, amount), method)


async def authorized(
    payments: Payments, order_id: str = "ord_1", user_id: str = "usr_ann"
) -> PaymentRow:
    return await payments.authorize(request(order_id, user_id=user_id))


# Authorize: the outcomes.


async def test_an_approved_authorization_holds_the_amount_once(
    payments: Payments, shop: Shop
) -> None:
    payment = await payments.authorize(request())
    assert payment.id.startswith("pay_")
    assert (payment.order_id, payment.user_id, payment.state) == ("ord_1", "usr_ann", AUTHORIZED)
    assert (payment.amount_currency, payment.amount_minor) == ("EUR", 2598)
    assert (payment.payment_method, payment.failure_reason) == ("card_approve", "")
    (charge,) = shop.provider.charged()
    assert (charge.key, charge.reference, charge.state) == (
        "ord_1",
        payment.provider_reference,
        AUTHORIZED,
    )
    assert charge.amount == Amount("EUR", 2598)
    stored = await payments.get(payment.id)
    assert (stored.order_id, stored.state, stored.provider_reference) == (
        "ord_1",
        AUTHORIZED,
        payment.provider_reference,
    )


async def test_authorizing_an_order_again_returns_the_same_payment_and_never_charges_twice(
    payments: Payments, shop: Shop
) -> None:
    first = await payments.authorize(request())
    again = await payments.authorize(request())
    assert (again.id, again.provider_reference, again.state) == (
        first.id,
        first.provider_reference,
        AUTHORIZED,
    )
    assert shop.provider.asked("authorize") == 1, "a repeat is answered from the payment"
    assert len(shop.provider.charged()) == 1 and len(shop.repository.rows) == 1

    # Further along, a repeat still returns the payment as it is now.
    await payments.capture("ord_1")
    assert (await payments.authorize(request())).state == CAPTURED
    assert shop.provider.asked("authorize") == 1


async def test_concurrent_authorizations_of_one_order_make_one_payment_and_one_charge(
    payments: Payments, shop: Shop
) -> None:
    shop.provider.authorize_gate = asyncio.Event()
    calls = [asyncio.create_task(payments.authorize(request())) for _ in range(10)]
    await asyncio.sleep(0)
    shop.provider.authorize_gate.set()
    results = await asyncio.gather(*calls)
    assert len({p.id for p in results}) == 1
    assert len(shop.repository.rows) == 1 and len(shop.provider.charged()) == 1


async def test_reusing_an_order_id_for_another_payment_is_refused(
    payments: Payments, shop: Shop
) -> None:
    first = await payments.authorize(request())
    for other in (
        request(amount=1),
        request(currency="USD"),
        request(user_id="usr_bob"),
        request(method="card_decline"),
    ):
        with pytest.raises(AlreadyExists) as refused:
            await payments.authorize(other)
        assert refused.value.reason == "PAYMENT_MISMATCH"
        assert refused.value.metadata == {"order_id": "ord_1", "payment_id": first.id}
    assert shop.provider.asked("authorize") == 1
    assert [p.state for p in shop.repository.rows.values()] == [AUTHORIZED]


@pytest.mark.parametrize(
    ("method", "code"),
    [("card_decline", "card_declined"), ("card_insufficient_funds", "insufficient_funds")],
)
async def test_a_decline_is_payment_declined_with_its_code_and_stays_declined(
    payments: Payments, shop: Shop, method: str, code: str
) -> None:
    with pytest.raises(FailedPrecondition) as declined:
        await payments.authorize(request(method=method))
    error = declined.value
    assert error.reason == "PAYMENT_DECLINED"
    assert error.metadata["decline_code"] == code
    (payment,) = shop.repository.rows.values()
    assert (payment.state, payment.failure_reason) == (DECLINED, code)
    assert error.metadata["payment_id"] == payment.id
    assert error.subjects == [f"payment:{payment.id}"]
    assert shop.provider.charged() == []

    # Every repeat is the same decline, without asking the provider again.
    with pytest.raises(FailedPrecondition) as again:
        await payments.authorize(request(method=method))
    assert again.value.reason == "PAYMENT_DECLINED"
    assert shop.provider.asked("authorize") == 1 and shop.provider.asked("find") == 0
    # A declined payment can't be captured, voided or refunded.
    for step in (payments.capture("ord_1"), payments.void("ord_1")):
        with pytest.raises(FailedPrecondition) as refused:
            await step
        assert (refused.value.reason, refused.value.metadata["state"]) == (
            "PAYMENT_NOT_AUTHORIZED",
            DECLINED,
        )
    with pytest.raises(FailedPrecondition) as refused:
        await payments.refund("ord_1", "r1", "")
    assert refused.value.reason == "PAYMENT_NOT_CAPTURED"


async def test_an_unknown_payment_method_is_an_invalid_argument_and_writes_nothing(
    payments: Payments, shop: Shop
) -> None:
    with pytest.raises(InvalidArgument) as refused:
        await payments.authorize(request(method="card_bogus"))
    assert [(v.field, v.reason) for v in refused.value.violations] == [
        ("payment_method", "payment_method.unknown")
    ]
    assert shop.provider.calls == [] and shop.repository.rows == {}


@pytest.mark.parametrize(
    ("method", "cause"),
    [("card_timeout", "provider_timeout"), ("card_error_after_charge", "provider_error")],
)
async def test_a_lost_answer_is_unavailable_and_the_retry_finds_the_charge(
    payments: Payments, shop: Shop, method: str, cause: str
) -> None:
    with pytest.raises(Unavailable) as lost:
        await payments.authorize(request(method=method))
    assert lost.value.reason == "PAYMENT_PROVIDER_UNAVAILABLE"
    assert lost.value.metadata == {"order_id": "ord_1", "cause": cause}
    (failed,) = shop.repository.rows.values()
    assert (failed.state, failed.failure_reason, failed.provider_reference) == (FAILED, cause, "")
    (charge,) = shop.provider.charged()  # the charge went through: the answer was lost

    retried = await payments.authorize(request(method=method))
    assert (retried.id, retried.state) == (failed.id, AUTHORIZED)
    assert (retried.provider_reference, retried.failure_reason) == (charge.reference, "")
    # Found by the lookup: the provider was asked to authorize exactly once.
    assert shop.provider.calls == [("authorize", "ord_1"), ("find", "ord_1")]
    assert len(shop.provider.charged()) == 1
    assert (await payments.authorize(request(method=method))).id == failed.id
    assert len(shop.provider.calls) == 2


async def test_a_failure_before_the_charge_stays_failed_until_the_provider_answers(
    payments: Payments, shop: Shop
) -> None:
    for _ in range(2):
        with pytest.raises(Unavailable):
            await payments.authorize(request(method="card_error"))
    (payment,) = shop.repository.rows.values()
    assert (payment.state, payment.failure_reason) == (FAILED, "provider_error")
    # The retry looked for a charge, found none, and asked again (under the same key).
    assert shop.provider.calls == [
        ("authorize", "ord_1"),
        ("find", "ord_1"),
        ("authorize", "ord_1"),
    ]
    assert shop.provider.charged() == []


async def test_a_lookup_that_times_out_leaves_the_payment_failed(
    payments: Payments, shop: Shop
) -> None:
    with pytest.raises(Unavailable):
        await payments.authorize(request(method="card_timeout"))
    shop.provider.fail_next = ["find"]
    with pytest.raises(Unavailable) as lost:
        await payments.authorize(request(method="card_timeout"))
    assert lost.value.metadata["cause"] == "provider_timeout"
    assert [p.state for p in shop.repository.rows.values()] == [FAILED]
    assert shop.provider.asked("authorize") == 1
    assert (await payments.authorize(request(method="card_timeout"))).state == AUTHORIZED
    assert len(shop.provider.charged()) == 1


async def test_a_timeout_before_the_provider_charged_is_retried_once(
    payments: Payments, shop: Shop
) -> None:
    shop.provider.fail_next = ["authorize"]
    with pytest.raises(Unavailable):
        await payments.authorize(request())
    assert shop.provider.charged() == []
    payment = await payments.authorize(request())
    assert payment.state == AUTHORIZED
    assert shop.provider.calls == [
        ("authorize", "ord_1"),
        ("find", "ord_1"),
        ("authorize", "ord_1"),
    ]
    assert len(shop.provider.charged()) == 1


# Capture, void, refund: the state rules.


async def test_capture_takes_an_authorized_payment_once(payments: Payments, shop: Shop) -> None:
    payment = await authorized(payments)
    captured = await payments.capture("ord_1")
    assert (captured.id, captured.state) == (payment.id, CAPTURED)
    assert captured.update_time >= payment.update_time
    assert shop.provider.by_reference(payment.provider_reference).state == CAPTURED
    again = await payments.capture("ord_1")
    assert again.state == CAPTURED and shop.provider.asked("capture") == 1
    # A captured payment can't be voided.
    with pytest.raises(FailedPrecondition) as refused:
        await payments.void("ord_1")
    assert refused.value.reason == "PAYMENT_NOT_AUTHORIZED"
    assert refused.value.metadata["state"] == CAPTURED
    assert shop.provider.asked("void") == 0


async def test_void_gives_an_authorized_hold_back_once(payments: Payments, shop: Shop) -> None:
    payment = await authorized(payments)
    voided = await payments.void("ord_1")
    assert (voided.id, voided.state) == (payment.id, VOIDED)
    assert shop.provider.by_reference(payment.provider_reference).state == VOIDED
    assert (await payments.void("ord_1")).state == VOIDED
    assert shop.provider.asked("void") == 1
    with pytest.raises(FailedPrecondition) as refused:
        await payments.capture("ord_1")
    assert (refused.value.reason, refused.value.metadata["state"]) == (
        "PAYMENT_NOT_AUTHORIZED",
        VOIDED,
    )
    with pytest.raises(FailedPrecondition) as refused:
        await payments.refund("ord_1", "r1", "")
    assert refused.value.reason == "PAYMENT_NOT_CAPTURED"


async def test_refund_only_from_captured_and_once_per_order(payments: Payments, shop: Shop) -> None:
    payment = await authorized(payments)
    with pytest.raises(FailedPrecondition) as refused:
        await payments.refund("ord_1", "refund-1", "too early")
    assert (refused.value.reason, refused.value.metadata["state"]) == (
        "PAYMENT_NOT_CAPTURED",
        AUTHORIZED,
    )
    await payments.capture("ord_1")

    refunded, did = await payments.refund("ord_1", "refund-1", "damaged")
    assert did and (refunded.id, refunded.state) == (payment.id, REFUNDED)
    assert (refunded.refund_request_id, refunded.refund_reason) == ("refund-1", "damaged")
    charge = shop.provider.by_reference(payment.provider_reference)
    assert (charge.state, charge.refund_key) == (REFUNDED, "refund-1")

    # The same request again, or another request for the order: the same refund.
    for request_id in ("refund-1", "refund-2"):
        again, did = await payments.refund("ord_1", request_id, "again")
        assert not did
        assert (again.state, again.refund_request_id, again.refund_reason) == (
            REFUNDED,
            "refund-1",
            "damaged",
        )
    assert shop.provider.asked("refund") == 1
    with pytest.raises(FailedPrecondition):
        await payments.capture("ord_1")
    with pytest.raises(FailedPrecondition):
        await payments.void("ord_1")


async def test_steps_on_an_order_without_a_payment_are_not_found(payments: Payments) -> None:
    for step in (
        payments.capture("ord_none"),
        payments.void("ord_none"),
        payments.refund("ord_none", "r", ""),
    ):
        with pytest.raises(NotFound) as missing:
            await step
        assert (missing.value.reason, missing.value.names) == ("PAYMENT_NOT_FOUND", ("ord_none",))


async def test_a_failed_payment_whose_charge_went_through_can_be_captured_or_voided(
    payments: Payments, shop: Shop
) -> None:
    for order_id, step in (("ord_c", payments.capture), ("ord_v", payments.void)):
        with pytest.raises(Unavailable):
            await payments.authorize(request(order_id, method="card_timeout"))
        done = await step(order_id)
        assert done.state == (CAPTURED if step == payments.capture else VOIDED)
        assert done.provider_reference == shop.provider.charges[order_id].reference
    assert shop.provider.asked("authorize") == 2


async def test_a_failed_payment_with_no_charge_cannot_be_voided(
    payments: Payments, shop: Shop
) -> None:
    with pytest.raises(Unavailable):
        await payments.authorize(request(method="card_error"))
    with pytest.raises(FailedPrecondition) as refused:
        await payments.void("ord_1")
    assert (refused.value.reason, refused.value.metadata["state"]) == (
        "PAYMENT_NOT_AUTHORIZED",
        FAILED,
    )
    assert shop.provider.asked("void") == 0 and shop.provider.charged() == []


async def test_a_provider_timeout_on_capture_is_unavailable_and_a_retry_captures_once(
    payments: Payments, shop: Shop
) -> None:
    await authorized(payments)
    shop.provider.fail_next = ["capture"]
    with pytest.raises(Unavailable) as lost:
        await payments.capture("ord_1")
    assert lost.value.reason == "PAYMENT_PROVIDER_UNAVAILABLE"
    assert [p.state for p in shop.repository.rows.values()] == [AUTHORIZED]
    assert (await payments.capture("ord_1")).state == CAPTURED


async def test_a_charge_moved_on_at_the_provider_is_a_failed_precondition(
    payments: Payments, shop: Shop
) -> None:
    """A concurrent void got to the provider first: the capture is refused with the
    provider's state, and the payment is not marked captured."""
    payment = await authorized(payments)
    shop.provider.by_reference(payment.provider_reference).state = VOIDED
    with pytest.raises(FailedPrecondition) as refused:
        await payments.capture("ord_1")
    assert (refused.value.reason, refused.value.metadata["state"]) == (
        "PAYMENT_NOT_AUTHORIZED",
        VOIDED,
    )
    assert (await payments.get(payment.id)).state == AUTHORIZED


# Reading.


async def test_get_of_an_unknown_payment_is_not_found(payments: Payments) -> None:
    with pytest.raises(NotFound) as missing:
        await payments.get("pay_missing")
    assert missing.value.reason == "PAYMENT_NOT_FOUND"


async def test_pages_list_one_users_payments_newest_first(payments: Payments) -> None:
    mine = [await authorized(payments, f"ord_{i}") for i in range(5)]
    await authorized(payments, "ord_other", user_id="usr_bob")
    seen: list[str] = []
    token = ""
    while True:
        page, token = await payments.list_page("usr_ann", None, 2, token)
        assert len(page) <= 2
        seen += [p.id for p in page]
        if not token:
            break
    # Newest first: ids sort by creation time (within one millisecond, by their random part).
    assert seen == sorted((p.id for p in mine), reverse=True)

    (only,), token = await payments.list_page("usr_ann", "ord_3", None, "")
    assert (only.id, token) == (mine[3].id, "")
    assert (await payments.list_page("usr_bob", "ord_3", None, ""))[0] == []
    # A page token belongs to its query.
    _, token = await payments.list_page("usr_ann", None, 2, "")
    with pytest.raises(InvalidArgument):
        await payments.list_page("usr_ann", "ord_3", 2, token)
    with pytest.raises(InvalidArgument):
        await payments.list_page("usr_bob", None, 2, token)


# Ownership (the handlers': a signed-in caller reads only their own payments).


@contextmanager
def signed_in(user_id: str, *roles: str) -> Iterator[None]:
    token = set_caller(Caller(user_id, frozenset(roles)))
    try:
        yield
    finally:
        reset_caller(token)


async def test_only_the_owner_or_an_admin_reads_a_payment(payments: Payments) -> None:
    payment = await authorized(payments)
    servicer = PaymentServicer(payments)
    get = payment_pb2.GetPaymentRequest(id=payment.id)
    listing = payment_pb2.ListPaymentsRequest(user_id="usr_ann")
    context: Any = None  # the handlers never touch it

    with signed_in("usr_ann"):
        assert (await servicer.GetPayment(get, context)).payment.id == payment.id
        assert len((await servicer.ListPayments(listing, context)).payments) == 1
    with signed_in("usr_bob"):
        with pytest.raises(PermissionDenied) as refused:
            await servicer.GetPayment(get, context)
        assert refused.value.reason == "NOT_OWNER"
        with pytest.raises(PermissionDenied):
            await servicer.ListPayments(listing, context)
    with signed_in("usr_admin", "admin"):
        reply = await servicer.GetPayment(get, context)
        assert reply.payment.state == payment_pb2.PAYMENT_STATE_AUTHORIZED


def test_the_provider_latency_is_read_in_milliseconds(monkeypatch: pytest.MonkeyPatch) -> None:
    assert ServiceConfig.from_env("payment", 0).payment_provider_latency == 0.0
    monkeypatch.setenv("PAYMENT_PROVIDER_LATENCY_MS", "250")
    assert ServiceConfig.from_env("payment", 0).payment_provider_latency == 0.25
    assert DEFAULT_PORTS["payment"] == 50055
