"""The payment service over real gRPC on loopback, on SQLite and on PostgreSQL, with the
simulated provider keeping its charges in the payment database."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from sqlalchemy import text

from services.common import migrate
from services.common.db import Database
from services.common.server import RunningService
from services.payment.models import Amount
from services.payment.provider import (
    Approved,
    ChargeConflict,
    Declined,
    ProviderUnavailable,
    SimulatedProvider,
)
from services.payment.wiring import SPEC
from shop.common.v1 import money_pb2
from shop.payment.v1 import (
    payment_internal_pb2 as internal_pb2,
)
from shop.payment.v1 import (
    payment_internal_pb2_grpc as internal_grpc,
)
from shop.payment.v1 import (
    payment_pb2,
    payment_pb2_grpc,
)
from tests import tokens
from tests.conftest import running
from tests.rpc import detail, fails, reason_of, violated_fields

INVALID = grpc.StatusCode.INVALID_ARGUMENT
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
ANN, BOB = "usr_ann", "usr_bob"


def eur(amount: int, currency: str = "EUR") -> money_pb2.Money:
    return money_pb2.Money(currency_code=currency, amount_minor=amount)


def authorize_request(
    order_id: str, method: str = "card_approve", amount: int = 2598, user_id: str = ANN
) -> internal_pb2.AuthorizeRequest:
    return internal_pb2.AuthorizeRequest(
        order_id=order_id, user_id=user_id, amount=eur(amount), payment_method=method
    )


@dataclass
class Stubs:
    service: RunningService[Any]
    payments: payment_pb2_grpc.PaymentServiceAsyncStub
    internal: internal_grpc.PaymentInternalServiceAsyncStub

    async def authorize(self, order_id: str, method: str = "card_approve") -> payment_pb2.Payment:
        reply = await self.internal.Authorize(authorize_request(order_id, method))
        return reply.payment

    async def capture(self, order_id: str) -> payment_pb2.Payment:
        return (await self.internal.Capture(internal_pb2.CaptureRequest(order_id=order_id))).payment

    async def void(self, order_id: str) -> payment_pb2.Payment:
        return (await self.internal.Void(internal_pb2.VoidRequest(order_id=order_id))).payment

    async def refund(
        self, order_id: str, request_id: str, reason: str = ""
    ) -> internal_pb2.RefundResponse:
        return await self.internal.Refund(
            internal_pb2.RefundRequest(order_id=order_id, request_id=request_id, reason=reason)
        )

    async def get(self, payment_id: str) -> payment_pb2.Payment:
        reply = await self.payments.GetPayment(payment_pb2.GetPaymentRequest(id=payment_id))
        return reply.payment

    async def listed(self, user_id: str = ANN, order_id: str = "") -> list[payment_pb2.Payment]:
        reply = await self.payments.ListPayments(
            payment_pb2.ListPaymentsRequest(user_id=user_id, order_id=order_id, page_size=1000)
        )
        return list(reply.payments)

    async def charges(self, key: str | None = None) -> list[tuple[str, str]]:
        """The simulated provider's charges (idempotency key, state), straight from its table."""
        query = "SELECT idempotency_key, state FROM provider_charges"
        async with self.service.platform.db.engine.connect() as connection:
            rows = (await connection.execute(text(query))).all()
        return sorted((k, s) for k, s in rows if key is None or k == key)


@asynccontextmanager
async def serving(database_url: str, data_dir: Path) -> AsyncIterator[Stubs]:
    async with running(SPEC, database_url, data_dir) as (service, channel):
        yield Stubs(
            service,
            payment_pb2_grpc.PaymentServiceStub(channel),
            internal_grpc.PaymentInternalServiceStub(channel),
        )


@pytest.fixture
async def stubs(database_url: str, tmp_path: Path) -> AsyncIterator[Stubs]:
    async with serving(database_url, tmp_path) as serving_stubs:
        yield serving_stubs


async def test_authorize_capture_refund(stubs: Stubs) -> None:
    payment = await stubs.authorize("ord_1")
    assert payment.id.startswith("pay_")
    assert (payment.order_id, payment.user_id, payment.payment_method) == (
        "ord_1",
        ANN,
        "card_approve",
    )
    assert (payment.amount.currency_code, payment.amount.amount_minor) == ("EUR", 2598)
    assert payment.state == payment_pb2.PAYMENT_STATE_AUTHORIZED
    assert payment.provider_reference.startswith("ch_") and payment.failure_reason == ""
    assert payment.create_time.seconds > 0 and payment.update_time == payment.create_time
    assert await stubs.get(payment.id) == payment
    # Authorizing the order again: the same payment, no second charge.
    assert await stubs.authorize("ord_1") == payment
    assert await stubs.charges() == [("ord_1", "AUTHORIZED")]

    captured = await stubs.capture("ord_1")
    assert (captured.id, captured.state) == (payment.id, payment_pb2.PAYMENT_STATE_CAPTURED)
    assert await stubs.capture("ord_1") == captured
    assert await stubs.charges() == [("ord_1", "CAPTURED")]

    refund = await stubs.refund("ord_1", "refund-1", "damaged in transit")
    assert refund.refunded
    assert refund.payment.state == payment_pb2.PAYMENT_STATE_REFUNDED
    assert (refund.payment.refund_request_id, refund.payment.refund_reason) == (
        "refund-1",
        "damaged in transit",
    )
    # The same request, or another one for the order: the same refund.
    for request_id in ("refund-1", "refund-2"):
        again = await stubs.refund("ord_1", request_id, "again")
        assert (again.refunded, again.payment) == (False, refund.payment)
    assert await stubs.charges() == [("ord_1", "REFUNDED")]
    assert await stubs.listed() == [refund.payment]


async def test_authorize_void_and_the_state_rules(stubs: Stubs) -> None:
    payment = await stubs.authorize("ord_v")
    error = await fails(stubs.refund("ord_v", "r1"), PRECONDITION)
    assert reason_of(error) == "PAYMENT_NOT_CAPTURED"
    voided = await stubs.void("ord_v")
    assert (voided.id, voided.state) == (payment.id, payment_pb2.PAYMENT_STATE_VOIDED)
    assert await stubs.void("ord_v") == voided
    assert await stubs.charges() == [("ord_v", "VOIDED")]
    error = await fails(stubs.capture("ord_v"), PRECONDITION)
    assert reason_of(error) == "PAYMENT_NOT_AUTHORIZED"
    info = detail(error, error_details_pb2.ErrorInfo)
    assert (info.metadata["state"], info.metadata["payment_id"]) == ("VOIDED", payment.id)
    failure = detail(error, error_details_pb2.PreconditionFailure)
    assert [v.subject for v in failure.violations] == [f"payment:{payment.id}"]

    for call in (stubs.capture("ord_x"), stubs.void("ord_x"), stubs.refund("ord_x", "r")):
        error = await fails(call, grpc.StatusCode.NOT_FOUND)
        assert reason_of(error) == "PAYMENT_NOT_FOUND"


async def test_capture_payments_captures_each_and_tells_what_became_of_the_others(
    stubs: Stubs, monkeypatch: pytest.MonkeyPatch
) -> None:
    for order_id in ("ord_a", "ord_b", "ord_done", "ord_v", "ord_silent"):
        await stubs.authorize(order_id)
    await stubs.capture("ord_done")
    await stubs.void("ord_v")
    await fails(stubs.authorize("ord_d", "card_decline"), PRECONDITION)
    await fails(stubs.authorize("ord_f", "card_error"), grpc.StatusCode.UNAVAILABLE)
    (silent,) = await stubs.listed(order_id="ord_silent")
    # The provider does not answer the capture of one of them.
    answering = SimulatedProvider.capture

    async def capture(provider: SimulatedProvider, reference: str) -> None:
        if reference == silent.provider_reference:
            raise ProviderUnavailable("provider_timeout")
        await answering(provider, reference)

    monkeypatch.setattr(SimulatedProvider, "capture", capture)
    order_ids = ["ord_a", "ord_done", "ord_v", "ord_d", "ord_f", "ord_x", "ord_silent", "ord_b"]
    request = internal_pb2.CapturePaymentsRequest(order_ids=order_ids)

    def states(reply: internal_pb2.CapturePaymentsResponse) -> list[str | None]:
        assert [outcome.order_id for outcome in reply.outcomes] == order_ids
        return [
            payment_pb2.PaymentState.Name(o.payment.state) if o.HasField("payment") else None
            for o in reply.outcomes
        ]

    reply = await stubs.internal.CapturePayments(request)
    expected = [
        "PAYMENT_STATE_CAPTURED",
        "PAYMENT_STATE_CAPTURED",  # captured before: as it was
        "PAYMENT_STATE_VOIDED",
        "PAYMENT_STATE_DECLINED",
        "PAYMENT_STATE_FAILED",  # nothing was charged: nothing to capture
        None,  # no payment
        "PAYMENT_STATE_AUTHORIZED",  # the provider did not answer: still held
        "PAYMENT_STATE_CAPTURED",
    ]
    assert states(reply) == expected
    assert reply.outcomes[0].payment.order_id == "ord_a" and reply.outcomes[0].payment.id
    assert await stubs.charges() == [
        ("ord_a", "CAPTURED"),
        ("ord_b", "CAPTURED"),
        ("ord_d", "DECLINED"),
        ("ord_done", "CAPTURED"),
        ("ord_silent", "AUTHORIZED"),
        ("ord_v", "VOIDED"),
    ]
    # Once the provider answers again, the same call captures the one left.
    monkeypatch.undo()
    expected[6] = "PAYMENT_STATE_CAPTURED"
    assert states(await stubs.internal.CapturePayments(request)) == expected
    assert ("ord_silent", "CAPTURED") in await stubs.charges()


@pytest.mark.parametrize(
    ("order_ids", "what"),
    [
        ([], "no order"),
        ([f"ord_{n}" for n in range(101)], "101 orders"),
        (["ord_1", "ord_1"], "an order twice"),
        (["ord_1", ""], "an empty order id"),
        (["ord_1", "o" * 65], "an order id of 65 characters"),
    ],
)
async def test_capture_payments_refuses_a_bad_batch_and_captures_none_of_it(
    stubs: Stubs, order_ids: list[str], what: str
) -> None:
    await stubs.authorize("ord_1")
    request = internal_pb2.CapturePaymentsRequest(order_ids=order_ids)
    error = await fails(stubs.internal.CapturePayments(request), INVALID)
    assert {f.split("[")[0] for f in violated_fields(error)} == {"order_ids"}, what
    assert await stubs.charges() == [("ord_1", "AUTHORIZED")], what


@pytest.mark.parametrize(
    ("method", "code"),
    [("card_decline", "card_declined"), ("card_insufficient_funds", "insufficient_funds")],
)
async def test_a_decline_is_failed_precondition_payment_declined(
    stubs: Stubs, method: str, code: str
) -> None:
    for _ in range(2):  # a repeat is the same decline
        error = await fails(stubs.authorize("ord_d", method), PRECONDITION)
        info = detail(error, error_details_pb2.ErrorInfo)
        assert (info.reason, info.metadata["decline_code"]) == ("PAYMENT_DECLINED", code)
    (payment,) = await stubs.listed(order_id="ord_d")
    assert (payment.state, payment.failure_reason) == (payment_pb2.PAYMENT_STATE_DECLINED, code)
    assert info.metadata["payment_id"] == payment.id
    assert await stubs.charges() == [("ord_d", "DECLINED")]
    error = await fails(stubs.capture("ord_d"), PRECONDITION)
    assert reason_of(error) == "PAYMENT_NOT_AUTHORIZED"


@pytest.mark.parametrize(
    ("method", "cause"),
    [("card_timeout", "provider_timeout"), ("card_error_after_charge", "provider_error")],
)
async def test_a_lost_answer_then_a_retry_finds_the_one_charge(
    stubs: Stubs, method: str, cause: str
) -> None:
    error = await fails(stubs.authorize("ord_t", method), grpc.StatusCode.UNAVAILABLE)
    info = detail(error, error_details_pb2.ErrorInfo)
    assert (info.reason, info.metadata["cause"]) == ("PAYMENT_PROVIDER_UNAVAILABLE", cause)
    (failed,) = await stubs.listed()
    assert (failed.state, failed.failure_reason, failed.provider_reference) == (
        payment_pb2.PAYMENT_STATE_FAILED,
        cause,
        "",
    )
    assert await stubs.charges() == [("ord_t", "AUTHORIZED")]  # it went through

    retried = await stubs.authorize("ord_t", method)
    assert (retried.id, retried.state) == (failed.id, payment_pb2.PAYMENT_STATE_AUTHORIZED)
    assert retried.provider_reference.startswith("ch_") and retried.failure_reason == ""
    assert await stubs.charges() == [("ord_t", "AUTHORIZED")], "exactly one charge"
    assert (await stubs.capture("ord_t")).state == payment_pb2.PAYMENT_STATE_CAPTURED


async def test_the_charges_survive_a_restart(database_url: str, tmp_path: Path) -> None:
    async with serving(database_url, tmp_path) as stubs:
        await fails(stubs.authorize("ord_r", "card_timeout"), grpc.StatusCode.UNAVAILABLE)
    async with serving(database_url, tmp_path) as stubs:
        retried = await stubs.authorize("ord_r", "card_timeout")
        assert retried.state == payment_pb2.PAYMENT_STATE_AUTHORIZED
        assert await stubs.charges() == [("ord_r", "AUTHORIZED")]


async def test_concurrent_authorizations_make_one_payment_and_one_charge(stubs: Stubs) -> None:
    results = await asyncio.gather(
        *(stubs.authorize("ord_c") for _ in range(10)), return_exceptions=True
    )
    payments = [r for r in results if isinstance(r, payment_pb2.Payment)]
    assert len(payments) == 10, [r for r in results if not isinstance(r, payment_pb2.Payment)]
    assert len({p.id for p in payments}) == 1
    assert await stubs.charges() == [("ord_c", "AUTHORIZED")]
    assert len(await stubs.listed()) == 1


async def test_authorizing_an_order_again_with_another_amount_is_refused(stubs: Stubs) -> None:
    await stubs.authorize("ord_m")
    error = await fails(
        stubs.internal.Authorize(authorize_request("ord_m", amount=1)),
        grpc.StatusCode.ALREADY_EXISTS,
    )
    assert reason_of(error) == "PAYMENT_MISMATCH"
    assert await stubs.charges() == [("ord_m", "AUTHORIZED")]


async def test_owners_read_their_own_payments_only(stubs: Stubs) -> None:
    mine = [await stubs.authorize(f"ord_{i}") for i in range(3)]
    theirs = (await stubs.internal.Authorize(authorize_request("ord_b", user_id=BOB))).payment

    as_ann = tokens.bearer(ANN)
    reply = await stubs.payments.GetPayment(
        payment_pb2.GetPaymentRequest(id=mine[0].id), metadata=as_ann
    )
    assert reply.payment == mine[0]
    pages: list[str] = []
    token = ""
    while True:
        page = await stubs.payments.ListPayments(
            payment_pb2.ListPaymentsRequest(user_id=ANN, page_size=2, page_token=token),
            metadata=as_ann,
        )
        pages += [p.id for p in page.payments]
        token = page.next_page_token
        if not token:
            break
    assert pages == sorted((p.id for p in mine), reverse=True)
    only = await stubs.payments.ListPayments(
        payment_pb2.ListPaymentsRequest(user_id=ANN, order_id="ord_1"), metadata=as_ann
    )
    assert [p.id for p in only.payments] == [mine[1].id]

    # Another user's payment, or list, is PERMISSION_DENIED.
    error = await fails(
        stubs.payments.GetPayment(payment_pb2.GetPaymentRequest(id=theirs.id), metadata=as_ann),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    assert reason_of(error) == "NOT_OWNER"
    await fails(
        stubs.payments.ListPayments(payment_pb2.ListPaymentsRequest(user_id=BOB), metadata=as_ann),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    await fails(
        stubs.payments.GetPayment(payment_pb2.GetPaymentRequest(id="pay_nope"), metadata=as_ann),
        grpc.StatusCode.NOT_FOUND,
    )
    # Without a token, nothing.
    async with tokens.service_channel(stubs.service.address) as anonymous:
        await fails(
            payment_pb2_grpc.PaymentServiceStub(anonymous).GetPayment(
                payment_pb2.GetPaymentRequest(id=mine[0].id)
            ),
            grpc.StatusCode.UNAUTHENTICATED,
        )


async def test_the_gateway_certificate_cannot_call_the_internal_service(stubs: Stubs) -> None:
    payment = await stubs.authorize("ord_g")
    async with tokens.service_channel(stubs.service.address, tokens.gateway_tls()) as gateway:
        reply = await payment_pb2_grpc.PaymentServiceStub(gateway).GetPayment(
            payment_pb2.GetPaymentRequest(id=payment.id), metadata=tokens.bearer(ANN)
        )
        assert reply.payment.id == payment.id
        internal = internal_grpc.PaymentInternalServiceStub(gateway)
        for call in (
            internal.Authorize(authorize_request("ord_gw"), metadata=tokens.bearer(ANN)),
            internal.Void(internal_pb2.VoidRequest(order_id="ord_g")),
            internal.Refund(internal_pb2.RefundRequest(order_id="ord_g", request_id="r")),
        ):
            error = await fails(call, grpc.StatusCode.PERMISSION_DENIED)
            assert reason_of(error) == "SERVICE_ONLY"
    assert (await stubs.get(payment.id)).state == payment_pb2.PAYMENT_STATE_AUTHORIZED
    assert await stubs.charges() == [("ord_g", "AUTHORIZED")]


@pytest.mark.parametrize(
    ("request_", "fields"),
    [
        (authorize_request(""), {"order_id"}),
        (authorize_request("ord_1", amount=-5), {"amount"}),
        (authorize_request("ord_1", amount=0), {"amount"}),
        (
            internal_pb2.AuthorizeRequest(
                order_id="ord_1",
                user_id=ANN,
                amount=eur(100, currency="eur"),
                payment_method="card_approve",
            ),
            {"amount.currency_code"},
        ),
        (
            internal_pb2.AuthorizeRequest(
                order_id="ord_1", user_id=ANN, payment_method="card_approve"
            ),
            {"amount"},
        ),
        (authorize_request("ord_1", method="card_bogus"), {"payment_method"}),
        (authorize_request("ord_1", method="Card Approve"), {"payment_method"}),
        (authorize_request("ord_1", method=""), {"payment_method"}),
        (authorize_request("ord_1", user_id=""), {"user_id"}),
        (authorize_request("o" * 65), {"order_id"}),
    ],
    ids=[
        "empty_order_id",
        "negative_amount",
        "zero_amount",
        "lowercase_currency",
        "no_amount",
        "unknown_payment_method",
        "malformed_payment_method",
        "empty_payment_method",
        "empty_user_id",
        "long_order_id",
    ],
)
async def test_bad_authorizations_are_refused_and_charge_nothing(
    stubs: Stubs, request_: internal_pb2.AuthorizeRequest, fields: set[str]
) -> None:
    error = await fails(stubs.internal.Authorize(request_), INVALID)
    assert violated_fields(error) == fields
    assert await stubs.charges() == []
    assert await stubs.listed() == []


async def test_bad_steps_are_refused(stubs: Stubs) -> None:
    bad: list[tuple[Any, set[str]]] = [
        (stubs.internal.Capture(internal_pb2.CaptureRequest()), {"order_id"}),
        (stubs.internal.Void(internal_pb2.VoidRequest()), {"order_id"}),
        (
            stubs.internal.Refund(internal_pb2.RefundRequest(order_id="ord_1")),
            {"request_id"},
        ),
        (
            stubs.internal.Refund(
                internal_pb2.RefundRequest(order_id="ord_1", request_id="has space")
            ),
            {"request_id"},
        ),
        (
            stubs.internal.Refund(
                internal_pb2.RefundRequest(order_id="ord_1", request_id="r", reason="x" * 501)
            ),
            {"reason"},
        ),
        (stubs.payments.GetPayment(payment_pb2.GetPaymentRequest()), {"id"}),
        (
            stubs.payments.ListPayments(payment_pb2.ListPaymentsRequest(user_id=ANN, page_size=0)),
            {"page_size"},
        ),
        (
            stubs.payments.ListPayments(
                payment_pb2.ListPaymentsRequest(user_id=ANN, page_token="forged")
            ),
            {"page_token"},
        ),
    ]
    for call, fields in bad:
        error = await fails(call, INVALID)
        assert violated_fields(error) == fields


# The simulated provider itself, on the payment database.


@pytest.fixture
async def provider_db(database_url: str) -> AsyncIterator[Database]:
    db = Database(database_url)
    await migrate.upgrade(db, SPEC.migrations, SPEC.name)
    try:
        yield db
    finally:
        await db.close()


async def test_the_simulated_provider_is_idempotent_and_keeps_its_rules(
    provider_db: Database,
) -> None:
    provider = SimulatedProvider(provider_db)
    amount = Amount("EUR", 500)
    first = await provider.authorize("key-1", amount, "card_approve")
    assert isinstance(first, Approved) and first.reference.startswith("ch_")
    # Asked again under the key (any method): the first answer, nothing charged.
    assert await provider.authorize("key-1", amount, "card_decline") == first
    assert await provider.find("key-1") == first
    assert await provider.find("key-none") is None
    twins = await asyncio.gather(
        *(provider.authorize("key-2", amount, "card_approve") for _ in range(5))
    )
    assert len(set(twins)) == 1

    declined = await provider.authorize("key-3", amount, "card_insufficient_funds")
    assert isinstance(declined, Declined) and declined.code == "insufficient_funds"
    with pytest.raises(ProviderUnavailable) as lost:
        await provider.authorize("key-4", amount, "card_error")
    assert lost.value.cause == "provider_error"
    assert await provider.find("key-4") is None
    with pytest.raises(ProviderUnavailable):
        await provider.authorize("key-5", amount, "card_error_after_charge")
    assert isinstance(await provider.find("key-5"), Approved)

    await provider.capture(first.reference)
    await provider.capture(first.reference)  # a repeat
    with pytest.raises(ChargeConflict) as conflict:
        await provider.void(first.reference)
    assert conflict.value.state == "CAPTURED"
    await provider.refund(first.reference, "refund-1")
    await provider.refund(first.reference, "refund-2")  # a repeat: still one refund
    with pytest.raises(ChargeConflict) as conflict:
        await provider.capture("ch_unknown")
    assert conflict.value.state == ""
    async with provider_db.engine.connect() as connection:
        row = (
            await connection.execute(
                text("SELECT state, refund_key FROM provider_charges WHERE idempotency_key='key-1'")
            )
        ).one()
    assert tuple(row) == ("REFUNDED", "refund-1")


async def test_the_simulated_provider_takes_its_latency(provider_db: Database) -> None:
    provider = SimulatedProvider(provider_db, latency=0.2)
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await provider.find("nothing") is None
    assert loop.time() - started >= 0.2
