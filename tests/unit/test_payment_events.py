"""The order service's payment events on the fakes: a refund is announced once
(PaymentRefunded, with its amount and currency) however often the order is cancelled or
the sweeper finishes it; an attempt given up at its payment is announced once
(PaymentFailed, with the user, the key, the amount and the reason); and nothing is
announced for failures that are not the payment's. Then the events, handed to the
notification use cases, make one notification each."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from services.common.errors import (
    DETAILS_KEY,
    DomainError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from services.common.events.envelope import Event
from services.common.pagination import PageTokens
from services.common.times import utcnow
from services.notification import models as notification_models
from services.notification.hub import Hub
from services.notification.usecases import Notifications
from services.order.convert import to_feed_message
from services.order.models import PAYMENT_DECLINED, PAYMENT_UNAVAILABLE, PaymentFailure
from services.order.peers import PeerError
from services.order.usecases import Orders, payment_failure
from shop.order.v1 import events_pb2
from tests.fakes.notification import InMemoryConsumer, InMemoryNotifications
from tests.fakes.order import Shop, lines, pending_row


def of_subject(events: list[Event], subject: str) -> list[Event]:
    return [event for event in events if event.subject == subject]


def refunds(shop: Shop) -> list[events_pb2.PaymentRefunded]:
    return [
        events_pb2.PaymentRefunded.FromString(event.payload)
        for event in of_subject(shop.repository.events, "payment.refunded")
    ]


def failures(shop: Shop) -> list[events_pb2.PaymentFailed]:
    return [
        events_pb2.PaymentFailed.FromString(event.payload)
        for event in of_subject(shop.repository.events, "payment.failed")
    ]


# -- PaymentRefunded ----------------------------------------------------------------


async def test_cancelling_twice_refunds_once_and_announces_one_refund(
    shop: Shop, orders: Orders
) -> None:
    user = shop.peers.add_user("usr_ann")
    mug = shop.peers.add_product("mug", stock=5, price=999, currency="EUR")
    placed = await orders.create(user, lines({mug: 2}), "k")

    await orders.cancel(placed.id, "changed my mind")
    await orders.cancel(placed.id, "twice")

    [refunded] = refunds(shop)
    assert (refunded.order_id, refunded.user_id) == (placed.id, user)
    assert (refunded.amount.currency_code, refunded.amount.amount_minor) == ("EUR", 1998)
    assert refunded.refund_request_id == f"cancel-{placed.id}"
    assert (refunded.reason, refunded.voided) == ("changed my mind", False)
    assert refunded.event_id == of_subject(shop.repository.events, "payment.refunded")[0].event_id
    assert refunded.occurred_at.seconds > 0
    assert [event.subject for event in shop.repository.events] == [
        "order.created",
        "order.cancelled",
        "payment.refunded",
    ]
    assert len(shop.peers.charges("REFUNDED")) == 1
    assert shop.peers.stock[mug] == 5


async def test_concurrent_cancels_announce_one_refund(shop: Shop, orders: Orders) -> None:
    user = shop.peers.add_user("usr_ann")
    mug = shop.peers.add_product("mug", stock=5)
    placed = await orders.create(user, lines({mug: 1}), "k")

    await asyncio.gather(*(orders.cancel(placed.id, f"cancel {i}") for i in range(5)))

    assert len(refunds(shop)) == 1
    assert len(of_subject(shop.repository.events, "order.cancelled")) == 1


async def test_a_hold_given_back_on_cancel_is_announced_as_voided(
    shop: Shop, orders: Orders
) -> None:
    user = shop.peers.add_user("usr_ann")
    mug = shop.peers.add_product("mug", stock=5, price=300)
    shop.peers.failing_captures = 1  # the capture is still to come when the user cancels
    placed = await orders.create(user, lines({mug: 1}), "k")

    await orders.cancel(placed.id, "")
    await orders.cancel(placed.id, "")

    [refunded] = refunds(shop)
    assert (refunded.voided, refunded.amount.amount_minor) == (True, 300)
    assert shop.peers.payments[placed.id].state == "VOIDED"


async def test_a_refund_the_sweeper_finishes_is_announced_once_when_done(
    shop: Shop, orders: Orders
) -> None:
    user = shop.peers.add_user("usr_ann")
    mug = shop.peers.add_product("mug", stock=5)
    placed = await orders.create(user, lines({mug: 1}), "k")
    shop.peers.failing_refunds = 1

    await orders.cancel(placed.id, "late")
    assert refunds(shop) == [], "nothing is announced before the money is back"
    commits = len(shop.commits)

    assert await orders.sweep() == 1
    await orders.sweep()
    await orders.cancel(placed.id, "late")
    [refunded] = refunds(shop)
    assert (refunded.order_id, refunded.reason) == (placed.id, "late")
    assert len(shop.commits) > commits, "the relay was told of the refund's event"


async def test_an_order_placed_before_payments_is_cancelled_without_a_refund_event(
    shop: Shop, orders: Orders
) -> None:
    user = shop.peers.add_user("usr_ann")
    mug = shop.peers.add_product("mug", stock=5)
    placed = await orders.create(user, lines({mug: 1}), "k")
    shop.repository.rows[placed.id].payment_state = "NONE"  # as migration 0002 left it

    await orders.cancel(placed.id, "")

    assert refunds(shop) == []


# -- PaymentFailed ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "decline_code"),
    [("card_decline", "card_declined"), ("card_insufficient_funds", "insufficient_funds")],
)
async def test_a_declined_payment_is_announced_once_with_user_key_amount_and_reason(
    shop: Shop, orders: Orders, method: str, decline_code: str
) -> None:
    user = shop.peers.add_user("usr_ann")
    mug = shop.peers.add_product("mug", stock=5, price=400, currency="EUR")

    with pytest.raises(FailedPrecondition):
        await orders.create(user, lines({mug: 3}), "declined-key", method)

    [failed] = failures(shop)
    [payment] = shop.peers.payments.values()
    assert (failed.order_id, failed.user_id, failed.idempotency_key) == (
        payment.order_id,
        user,
        "declined-key",
    )
    assert (failed.amount.currency_code, failed.amount.amount_minor) == ("EUR", 1200)
    assert (failed.payment_method, failed.failure, failed.decline_code) == (
        method,
        events_pb2.PAYMENT_FAILURE_DECLINED,
        decline_code,
    )
    # Stock unchanged, no order, nothing charged.
    assert shop.peers.stock[mug] == 5 and shop.peers.held() == {}
    assert not shop.repository.rows and shop.peers.charges() == []
    [event] = shop.repository.events
    message = to_feed_message(event)
    assert message.WhichOneof("event") == "payment_failed"
    assert message.payment_failed == failed


async def test_each_failed_attempt_under_one_key_is_its_own_event(
    shop: Shop, orders: Orders
) -> None:
    user = shop.peers.add_user("usr_ann")
    mug = shop.peers.add_product("mug", stock=5)
    for _ in range(2):
        with pytest.raises(FailedPrecondition):
            await orders.create(user, lines({mug: 1}), "same-key", "card_decline")

    announced = failures(shop)
    assert [f.idempotency_key for f in announced] == ["same-key", "same-key"]
    assert len({f.order_id for f in announced}) == 2
    assert len({e.event_id for e in shop.repository.events}) == 2


async def test_a_provider_that_never_answers_is_announced_unavailable(
    shop: Shop, orders: Orders
) -> None:
    user = shop.peers.add_user("usr_ann")
    mug = shop.peers.add_product("mug", stock=5)
    with pytest.raises(Unavailable):
        await orders.create(user, lines({mug: 2}), "k", "card_error")

    [failed] = failures(shop)
    assert (failed.failure, failed.decline_code, failed.payment_method) == (
        events_pb2.PAYMENT_FAILURE_UNAVAILABLE,
        "",
        "card_error",
    )
    assert shop.peers.stock[mug] == 5 and not shop.repository.rows


@pytest.mark.parametrize("case", ["unknown_method", "short_stock", "breaker_open"])
async def test_failures_that_are_not_the_payment_s_are_not_announced(
    shop: Shop, orders: Orders, case: str
) -> None:
    user = shop.peers.add_user("usr_ann")
    mug = shop.peers.add_product("mug", stock=1)
    method, quantity = "card_approve", 1
    if case == "unknown_method":
        method = "card_bogus"
    elif case == "short_stock":
        quantity = 2
    else:
        shop.peers.payment_circuit_open = True
    with pytest.raises(DomainError):
        await orders.create(user, lines({mug: quantity}), "k", method)
    assert shop.nothing_written()


async def test_an_attempt_the_sweeper_undoes_is_not_announced(shop: Shop, orders: Orders) -> None:
    user = shop.peers.add_user("usr_ann")
    await shop.repository.claim(pending_row("ord_dead", user, "k", age=timedelta(minutes=5)))

    await orders.sweep()

    assert not shop.repository.rows and shop.repository.events == []


async def test_an_attempt_failed_by_the_sweeper_meanwhile_is_not_announced_again(
    shop: Shop,
) -> None:
    """The attempt's own undoing finds its row FAILED already (the sweeper took it over):
    the attempt is not announced, since only the move from PENDING announces."""
    user = shop.peers.add_user("usr_ann")
    await shop.repository.claim(pending_row("ord_x", user, "k", age=timedelta()))
    await shop.repository.fail_stale(utcnow() + timedelta(seconds=1), utcnow())

    def announce(order: object) -> Event:
        raise AssertionError("announced")

    abandoned = await shop.repository.fail("ord_x", utcnow(), False, announce)
    assert abandoned is not None and shop.repository.events == []


def test_what_an_authorize_failure_means_for_the_user() -> None:
    declined = FailedPrecondition(
        "declined", "PAYMENT_DECLINED", ["payment:pay_1"], decline_code="insufficient_funds"
    )
    provider = Unavailable(
        "payment service is unavailable",
        "PAYMENT_UNAVAILABLE",
        peer="payment",
        peer_reason="PAYMENT_PROVIDER_UNAVAILABLE",
    )
    gone = Unavailable("payment service is unavailable", "PAYMENT_UNAVAILABLE", peer="payment")
    assert payment_failure(declined, "card_x") == PaymentFailure(
        PAYMENT_DECLINED, "card_x", "insufficient_funds"
    )
    assert payment_failure(provider, "card_x") == PaymentFailure(PAYMENT_UNAVAILABLE, "card_x")
    assert payment_failure(gone, "card_x") is None
    assert payment_failure(InvalidArgument.of("payment_method", "unknown"), "x") is None
    assert payment_failure(NotFound("payment", "ord_1"), "x") is None


def _rpc_error(code: grpc.StatusCode, info: error_details_pb2.ErrorInfo) -> grpc.aio.AioRpcError:
    status = status_pb2.Status(code=code.value[0], message="from the payment service")
    status.details.add().Pack(info)
    return grpc.aio.AioRpcError(
        code,
        grpc.aio.Metadata(),
        grpc.aio.Metadata((DETAILS_KEY, status.SerializeToString())),
        details="from the payment service",
    )


def test_the_payment_service_s_reason_reaches_the_use_cases_and_the_client_unchanged() -> None:
    declined = _rpc_error(
        grpc.StatusCode.FAILED_PRECONDITION,
        error_details_pb2.ErrorInfo(
            reason="PAYMENT_DECLINED", metadata={"decline_code": "card_declined"}
        ),
    )
    error = PeerError("payment", declined)
    assert (error.reason, error.metadata["decline_code"]) == ("PAYMENT_DECLINED", "card_declined")
    assert error.to_status().message == "from the payment service"

    provider = _rpc_error(
        grpc.StatusCode.UNAVAILABLE,
        error_details_pb2.ErrorInfo(reason="PAYMENT_PROVIDER_UNAVAILABLE"),
    )
    error = PeerError("payment", provider)
    # The client still gets the order service's own UNAVAILABLE; the cause rides along.
    assert (error.code, error.reason) == (grpc.StatusCode.UNAVAILABLE, "PAYMENT_UNAVAILABLE")
    assert error.metadata == {"peer": "payment", "peer_reason": "PAYMENT_PROVIDER_UNAVAILABLE"}
    assert payment_failure(error, "card_error") == PaymentFailure(PAYMENT_UNAVAILABLE, "card_error")


# -- from the order service's events to the user's notifications ----------------------


async def test_the_events_make_one_notification_each_however_often_delivered(
    shop: Shop, orders: Orders
) -> None:
    """The order use cases' events, delivered twice each to the notification use cases:
    a placed, cancelled (twice) and refunded order, and a declined attempt, make four
    notifications, in that order."""
    user = shop.peers.add_user("usr_ann")
    mug = shop.peers.add_product("mug", stock=5, price=1250)
    placed = await orders.create(user, lines({mug: 1}), "k1")
    await orders.cancel(placed.id, "changed my mind")
    await orders.cancel(placed.id, "changed my mind")
    with pytest.raises(FailedPrecondition):
        await orders.create(user, lines({mug: 2}), "k2", "card_insufficient_funds")

    repository = InMemoryNotifications()
    notifications = Notifications(repository, PageTokens("unit-test-secret"), Hub())
    consumer = InMemoryConsumer(notifications, repository)
    for event in [*shop.repository.events, *shop.repository.events]:
        await consumer.apply(event)

    rows = sorted(repository.rows, key=lambda row: row.user_seq)
    assert [row.kind for row in rows] == [
        notification_models.ORDER_PLACED,
        notification_models.ORDER_CANCELLED,
        notification_models.PAYMENT_REFUNDED,
        notification_models.PAYMENT_FAILED,
    ]
    assert {row.user_id for row in rows} == {user}
    refunded, failed = rows[2], rows[3]
    assert refunded.order_id == placed.id
    assert refunded.body == f"Your payment of 12.50 EUR for order {placed.id} has been refunded."
    assert failed.title == "Payment declined"
    assert "25.00 EUR" in failed.body and "insufficient funds" in failed.body
    assert consumer.duplicates == 4
