"""The order service's events (about orders and their payments) as this service
consumes them: their subjects (derived from the order contract), their payloads read by
subject, and the consumer's handler."""

from __future__ import annotations

import logging
from collections.abc import Callable

from services.common.events.consumer import Handler
from services.common.events.envelope import Event
from services.common.events.feed import subjects
from services.common.transactions import Transaction
from services.notification import models
from services.notification.convert import failure_event, order_event, refund_event
from services.notification.models import OrderEvent
from services.notification.repository import NotificationStore
from services.notification.usecases import Notifications
from shop.order.v1 import events_pb2, order_internal_pb2

events_log = logging.getLogger("shop.notification")

# Every order event is a field of the order feed's `event` oneof, which names its subject.
_SUBJECTS = subjects(order_internal_pb2.StreamOrderEventsResponse)
ORDER_CREATED = _SUBJECTS[events_pb2.OrderCreated.DESCRIPTOR.full_name]
ORDER_CANCELLED = _SUBJECTS[events_pb2.OrderCancelled.DESCRIPTOR.full_name]
PAYMENT_REFUNDED = _SUBJECTS[events_pb2.PaymentRefunded.DESCRIPTOR.full_name]
PAYMENT_FAILED = _SUBJECTS[events_pb2.PaymentFailed.DESCRIPTOR.full_name]

# Subject -> how its payload (event id, serialized message) becomes an OrderEvent.
_PARSERS: dict[str, Callable[[str, bytes], OrderEvent]] = {
    ORDER_CREATED: lambda event_id, payload: order_event(
        event_id, models.ORDER_PLACED, events_pb2.OrderCreated.FromString(payload).order
    ),
    ORDER_CANCELLED: lambda event_id, payload: order_event(
        event_id, models.ORDER_CANCELLED, events_pb2.OrderCancelled.FromString(payload).order
    ),
    PAYMENT_REFUNDED: lambda event_id, payload: refund_event(
        event_id, events_pb2.PaymentRefunded.FromString(payload)
    ),
    PAYMENT_FAILED: lambda event_id, payload: failure_event(
        event_id, events_pb2.PaymentFailed.FromString(payload)
    ),
}


def parse(event: Event) -> OrderEvent | None:
    """The event in `event`'s payload; None for a subject this service ignores."""
    parser = _PARSERS.get(event.subject)
    if parser is None:
        return None
    return parser(event.event_id, event.payload)


def handler(
    notifications: Notifications, store_in: Callable[[Transaction], NotificationStore]
) -> Handler:
    """The Consumer's handler: the event's notification, in the consumer's transaction."""

    async def handle(transaction: Transaction, event: Event) -> Callable[[], None] | None:
        parsed = parse(event)
        if parsed is None:
            events_log.info("ignored event", extra={"subject": event.subject})
            return None
        return await notifications.record(store_in(transaction), parsed)

    return handle
