"""Payment events become notifications (on the in-memory fakes): a refund and a payment
failure make one notification each, worded from the event's amount and reason, stored
once however often the event is delivered (by event id), pushed to the user's live
stream, and read from the embedded feed's messages like the order events."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from services.common.events.envelope import Event
from services.common.events.feed import event_of
from services.common.pagination import PageTokens
from services.notification import models, order_events
from services.notification.convert import notification_to_proto
from services.notification.hub import Hub
from services.notification.usecases import Notifications
from shop.common.v1 import money_pb2
from shop.notification.v1 import notification_pb2
from shop.order.v1 import events_pb2, order_internal_pb2
from tests.fakes.notification import InMemoryConsumer, InMemoryNotifications


class Service:
    def __init__(self) -> None:
        self.repository = InMemoryNotifications()
        self.notifications = Notifications(
            self.repository, PageTokens("unit-test-secret"), Hub(), catch_up_interval=60
        )
        self.consumer = InMemoryConsumer(self.notifications, self.repository)

    def rows(self, user_id: str) -> list[models.NotificationRow]:
        return sorted(
            (row for row in self.repository.rows if row.user_id == user_id),
            key=lambda row: row.user_seq,
        )


@pytest.fixture
def service() -> Service:
    return Service()


def refunded(
    event_id: str = "evt_r1",
    *,
    user_id: str = "usr_a",
    order_id: str = "ord_1",
    amount: tuple[int, str] = (1998, "EUR"),
    reason: str = "changed my mind",
    voided: bool = False,
) -> Event:
    message = events_pb2.PaymentRefunded(
        event_id=event_id,
        order_id=order_id,
        user_id=user_id,
        amount=money_pb2.Money(amount_minor=amount[0], currency_code=amount[1]),
        refund_request_id=f"cancel-{order_id}",
        reason=reason,
        voided=voided,
    )
    return Event(event_id, order_events.PAYMENT_REFUNDED, message.SerializeToString())


def failed(
    event_id: str = "evt_f1",
    *,
    user_id: str = "usr_a",
    attempt_id: str = "ord_attempt",
    amount: tuple[int, str] = (1200, "EUR"),
    failure: events_pb2.PaymentFailure = events_pb2.PAYMENT_FAILURE_DECLINED,
    decline_code: str = "insufficient_funds",
) -> Event:
    message = events_pb2.PaymentFailed(
        event_id=event_id,
        order_id=attempt_id,
        user_id=user_id,
        idempotency_key="key-1",
        amount=money_pb2.Money(amount_minor=amount[0], currency_code=amount[1]),
        payment_method="card_insufficient_funds",
        failure=failure,
        decline_code=decline_code,
    )
    return Event(event_id, order_events.PAYMENT_FAILED, message.SerializeToString())


def test_payment_subjects_are_the_feed_field_names_with_dots() -> None:
    assert (order_events.PAYMENT_REFUNDED, order_events.PAYMENT_FAILED) == (
        "payment.refunded",
        "payment.failed",
    )


async def test_a_refund_makes_one_notification_with_its_amount(service: Service) -> None:
    await service.consumer.apply(refunded(amount=(1998, "EUR")))
    [row] = service.rows("usr_a")
    assert (row.kind, row.title, row.order_id, row.event_id) == (
        models.PAYMENT_REFUNDED,
        "Payment refunded",
        "ord_1",
        "evt_r1",
    )
    assert row.body == "Your payment of 19.98 EUR for order ord_1 has been refunded."
    assert not row.read
    proto = notification_to_proto(row)
    assert proto.kind == notification_pb2.NOTIFICATION_KIND_PAYMENT_REFUNDED


async def test_a_released_hold_says_nothing_was_charged(service: Service) -> None:
    await service.consumer.apply(refunded(amount=(700, "JPY"), voided=True))
    [row] = service.rows("usr_a")
    assert (row.kind, row.title) == (models.PAYMENT_REFUNDED, "Payment released")
    assert row.body == (
        "The 700 JPY held for your cancelled order ord_1 has been released; nothing was charged."
    )


async def test_a_decline_makes_one_payment_failure_notification(service: Service) -> None:
    await service.consumer.apply(failed(amount=(1200, "EUR"), decline_code="insufficient_funds"))
    [row] = service.rows("usr_a")
    assert (row.kind, row.title, row.order_id) == (
        models.PAYMENT_FAILED,
        "Payment declined",
        "ord_attempt",
    )
    assert row.body == (
        "Your payment of 12.00 EUR was declined (insufficient funds)."
        " No order was placed and nothing was charged."
    )
    proto = notification_to_proto(row)
    assert proto.kind == notification_pb2.NOTIFICATION_KIND_PAYMENT_FAILED


async def test_a_provider_failure_asks_to_try_again(service: Service) -> None:
    await service.consumer.apply(
        failed(failure=events_pb2.PAYMENT_FAILURE_UNAVAILABLE, decline_code="")
    )
    [row] = service.rows("usr_a")
    assert (row.kind, row.title) == (models.PAYMENT_FAILED, "Payment failed")
    assert row.body.endswith("nothing was charged; please try again.")


@pytest.mark.parametrize("make", [refunded, failed], ids=["refunded", "failed"])
async def test_a_payment_event_delivered_twice_is_stored_once(
    service: Service, make: Callable[[], Event]
) -> None:
    event = make()
    assert await service.consumer.apply(event)
    assert not await service.consumer.apply(event)
    assert [row.user_seq for row in service.rows("usr_a")] == [1]
    assert (service.consumer.applied, service.consumer.duplicates) == (1, 1)


async def test_payment_notifications_reach_the_user_s_live_stream(service: Service) -> None:
    stream = service.notifications.stream("usr_a", "")
    first = asyncio.ensure_future(anext(stream))
    await service.repository.until_read("after", "usr_a")
    await service.consumer.apply(refunded())
    row = await asyncio.wait_for(first, 5)
    assert row.kind == models.PAYMENT_REFUNDED
    # The stream is subscribed: a wake-up after its last read is not lost.
    second = asyncio.ensure_future(anext(stream))
    await service.consumer.apply(failed())
    assert (await asyncio.wait_for(second, 5)).kind == models.PAYMENT_FAILED
    await stream.aclose()


@pytest.mark.parametrize(
    ("field", "message"),
    [
        ("payment_refunded", events_pb2.PaymentRefunded(event_id="evt_9", order_id="ord_9")),
        ("payment_failed", events_pb2.PaymentFailed(event_id="evt_9", order_id="ord_9")),
    ],
)
def test_a_feed_message_of_a_payment_event_becomes_that_event(
    field: str, message: events_pb2.PaymentRefunded | events_pb2.PaymentFailed
) -> None:
    feed = order_internal_pb2.StreamOrderEventsResponse(sequence=5)
    getattr(feed, field).CopyFrom(message)
    event = event_of(feed)
    assert (event.event_id, event.subject, event.sequence) == ("evt_9", field.replace("_", "."), 5)
    parsed = order_events.parse(event)
    assert parsed is not None and parsed.order_id == "ord_9"
