"""Payment events on the real mesh, in the user's live stream: cancelling twice refunds
once and makes one PaymentRefunded event and one refund notification; a declined payment
method makes one PaymentFailed event and one payment-failure notification, moves no
stock and captures nothing. On SQLite and PostgreSQL over the embedded feed, and over
NATS JetStream (on SQLite and on PostgreSQL)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from shop.notification.v1 import notification_pb2
from shop.order.v1 import events_pb2, order_pb2
from shop.payment.v1 import payment_pb2
from tests.conftest import require
from tests.e2e.test_order_flow import feed_events, stream_is_open, wait_for_notifications
from tests.mesh import Mesh, running_mesh
from tests.rpc import fails, next_message, reason_of

NATS_URL = "nats://127.0.0.1:4222"


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("postgres", marks=pytest.mark.postgres),
        "sqlite+nats",
        pytest.param("postgres+nats", marks=pytest.mark.postgres),
    ]
)
async def mesh(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Mesh]:
    """The mesh on a database (SQLite files, PostgreSQL) with its events on a transport
    (the embedded feed; NATS JetStream, a stream of the test's own)."""
    database, _, transport = request.param.partition("+")
    broker = ""
    if transport == "nats":
        require("127.0.0.1", 4222, "NATS")
        broker = NATS_URL
    async with running_mesh(tmp_path, broker, database=database) as running:
        yield running


def live_stream(mesh: Mesh, user_id: str) -> Any:
    return mesh.notifications.StreamNotifications(
        notification_pb2.StreamNotificationsRequest(user_id=user_id)
    )


async def quiet(stream: Any, seconds: float = 0.7) -> bool:
    """True when the stream sends nothing more for `seconds` (nothing doubled)."""
    try:
        await asyncio.wait_for(stream.read(), seconds)
    except TimeoutError:
        return True
    return False


async def outbox_subjects(mesh: Mesh) -> list[str]:
    rows = await mesh.rows("order", "SELECT subject FROM outbox ORDER BY id")
    return [row.subject for row in rows]


async def test_cancelling_twice_refunds_once_with_one_event_and_one_live_notification(
    mesh: Mesh,
) -> None:
    user = await mesh.user()
    mug = await mesh.product(stock=10, price=999)
    stream = live_stream(mesh, user.id)
    await stream_is_open(mesh)
    placed = (await mesh.orders.CreateOrder(mesh.order_request(user.id, {mug.id: 2}))).order

    cancel = order_pb2.CancelOrderRequest(id=placed.id, reason="changed my mind")
    await mesh.orders.CancelOrder(cancel)
    await mesh.orders.CancelOrder(cancel)

    live = [(await next_message(stream, 15)).notification for _ in range(3)]
    assert [n.kind for n in live] == [
        notification_pb2.NOTIFICATION_KIND_ORDER_PLACED,
        notification_pb2.NOTIFICATION_KIND_ORDER_CANCELLED,
        notification_pb2.NOTIFICATION_KIND_PAYMENT_REFUNDED,
    ]
    refund_note = live[2]
    assert (refund_note.user_id, refund_note.order_id, refund_note.title) == (
        user.id,
        placed.id,
        "Payment refunded",
    )
    assert "19.98 EUR" in refund_note.body
    assert await quiet(stream), "one refund notification, not two"
    stream.cancel()

    # One refund at the payment service; one PaymentRefunded event in the order service.
    [payment] = (
        await mesh.payments.ListPayments(
            payment_pb2.ListPaymentsRequest(user_id=user.id, order_id=placed.id)
        )
    ).payments
    assert payment.state == payment_pb2.PAYMENT_STATE_REFUNDED
    assert payment.refund_request_id == f"cancel-{placed.id}"
    assert await outbox_subjects(mesh) == ["order.created", "order.cancelled", "payment.refunded"]
    if not mesh.broker_url:  # the embedded feed serves the outbox to consumers
        events = await feed_events(mesh)
        [refunded] = [e.payment_refunded for e in events if e.HasField("payment_refunded")]
        assert (refunded.order_id, refunded.user_id) == (placed.id, user.id)
        assert (refunded.amount.currency_code, refunded.amount.amount_minor) == ("EUR", 1998)
        assert (refunded.reason, refunded.voided) == ("changed my mind", False)
        assert refunded.event_id == refund_note.event_id
    notes = await wait_for_notifications(mesh, user.id, 3)
    assert len(notes) == 3
    assert await mesh.stock_of(mug.id) == [10]


@pytest.mark.parametrize(
    ("method", "decline_code"),
    [("card_decline", "card_declined"), ("card_insufficient_funds", "insufficient_funds")],
)
async def test_a_declined_method_makes_one_live_payment_failure_and_moves_no_stock(
    mesh: Mesh, method: str, decline_code: str
) -> None:
    user = await mesh.user()
    mug = await mesh.product(stock=10, price=400)
    stream = live_stream(mesh, user.id)
    await stream_is_open(mesh)
    request = mesh.order_request(user.id, {mug.id: 3}, key="pays-badly", payment_method=method)

    error = await fails(mesh.orders.CreateOrder(request), grpc.StatusCode.FAILED_PRECONDITION)
    assert reason_of(error) == "PAYMENT_DECLINED"

    note = (await next_message(stream, 15)).notification
    [payment] = (
        await mesh.payments.ListPayments(payment_pb2.ListPaymentsRequest(user_id=user.id))
    ).payments
    assert (note.kind, note.user_id, note.order_id) == (
        notification_pb2.NOTIFICATION_KIND_PAYMENT_FAILED,
        user.id,
        payment.order_id,
    )
    assert note.title == "Payment declined"
    assert "12.00 EUR" in note.body and decline_code.replace("_", " ") in note.body
    assert await quiet(stream), "one failure notification"
    stream.cancel()

    # Stock unchanged, no order, no captured payment, one PaymentFailed event.
    assert await mesh.stock_of(mug.id) == [10]
    assert await mesh.sql("order", "SELECT count(*) FROM orders") == 0
    assert payment.state == payment_pb2.PAYMENT_STATE_DECLINED
    captured = await mesh.sql("payment", "SELECT count(*) FROM payments WHERE state = 'CAPTURED'")
    assert captured == 0
    assert await outbox_subjects(mesh) == ["payment.failed"]
    payload = await mesh.sql("order", "SELECT payload FROM outbox")
    failed = events_pb2.PaymentFailed.FromString(bytes(payload))
    assert (failed.order_id, failed.user_id, failed.idempotency_key) == (
        payment.order_id,
        user.id,
        "pays-badly",
    )
    assert (failed.amount.currency_code, failed.amount.amount_minor) == ("EUR", 1200)
    assert (failed.failure, failed.decline_code, failed.payment_method) == (
        events_pb2.PAYMENT_FAILURE_DECLINED,
        decline_code,
        method,
    )
    assert failed.event_id == note.event_id


async def test_a_provider_that_fails_makes_a_payment_failure_a_lost_answer_does_not(
    mesh: Mesh,
) -> None:
    """card_error: the provider fails every time, the attempt is given up, the user hears
    of it. card_timeout: the answer of a charge is lost once, the retry finds it, the
    order is placed: the user hears of the order only."""
    user = await mesh.user()
    mug = await mesh.product(stock=10, price=100)
    failing = mesh.order_request(user.id, {mug.id: 1}, payment_method="card_error")
    await fails(mesh.orders.CreateOrder(failing), grpc.StatusCode.UNAVAILABLE)
    placed = (
        await mesh.orders.CreateOrder(
            mesh.order_request(user.id, {mug.id: 1}, payment_method="card_timeout")
        )
    ).order

    notes = await wait_for_notifications(mesh, user.id, 2, within=15)
    assert sorted((n.kind, n.title) for n in notes) == [
        (notification_pb2.NOTIFICATION_KIND_ORDER_PLACED, "Order placed"),
        (notification_pb2.NOTIFICATION_KIND_PAYMENT_FAILED, "Payment failed"),
    ]
    assert placed.id in {n.order_id for n in notes}
    assert await mesh.stock_of(mug.id) == [9]
