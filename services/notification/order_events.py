"""The order service's events (about orders and their payments) as this service
consumes them: their subjects (derived from the order contract), their payloads read by
subject, the consumer's handler, and
FeedSource, which follows the order service's outbox over gRPC (embedded transport)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import grpc

from services.common import clients
from services.common.events.consumer import Consumer, Handler
from services.common.events.envelope import Event
from services.common.tls import TlsSettings
from services.common.transactions import Transaction
from services.notification import models
from services.notification.convert import failure_event, order_event, refund_event
from services.notification.models import OrderEvent
from services.notification.repository import NotificationStore
from services.notification.usecases import Notifications
from shop.order.v1 import events_pb2, order_internal_pb2, order_internal_pb2_grpc

log = logging.getLogger("shop.feed")
events_log = logging.getLogger("shop.notification")

_FEED_MESSAGE = order_internal_pb2.StreamOrderEventsResponse


def subject_of(field: str) -> str:
    """The logical subject of a oneof field of StreamOrderEventsResponse, as the order
    service derives it too: 'order_created' -> 'order.created'."""
    return field.replace("_", ".")


def _field(number: int) -> str:
    return _FEED_MESSAGE.DESCRIPTOR.fields_by_number[number].name


ORDER_CREATED = subject_of(_field(_FEED_MESSAGE.ORDER_CREATED_FIELD_NUMBER))
ORDER_CANCELLED = subject_of(_field(_FEED_MESSAGE.ORDER_CANCELLED_FIELD_NUMBER))
PAYMENT_REFUNDED = subject_of(_field(_FEED_MESSAGE.PAYMENT_REFUNDED_FIELD_NUMBER))
PAYMENT_FAILED = subject_of(_field(_FEED_MESSAGE.PAYMENT_FAILED_FIELD_NUMBER))
# What an event this build does not know is applied as: recorded, and nothing done.
UNKNOWN_SUBJECT = "unknown"

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


def from_feed_message(response: order_internal_pb2.StreamOrderEventsResponse) -> Event:
    field = response.WhichOneof("event")
    if field is None:
        # An event added to the contract after this build: applied as "nothing to do",
        # so the feed's position moves past it instead of stopping there for ever.
        return Event(
            event_id=f"feed-{response.sequence}",
            subject=UNKNOWN_SUBJECT,
            payload=b"",
            headers=dict(response.headers),
            sequence=response.sequence,
        )
    message = getattr(response, field)
    return Event(
        event_id=message.event_id,
        subject=subject_of(field),
        payload=message.SerializeToString(),
        headers=dict(response.headers),
        sequence=response.sequence,
    )


class FeedSource:
    """Follows the order service's outbox over gRPC, from the consumer's stored position.

    Reconnects with backoff when the order service is away; since the position is
    stored with each applied event, nothing is skipped or applied twice.
    """

    def __init__(
        self, order_addresses: str, consumer: Consumer, tls: TlsSettings | None = None
    ) -> None:
        self._channel = clients.channel(order_addresses, default_timeout=None, tls=tls)
        self._stub = order_internal_pb2_grpc.OrderInternalServiceStub(self._channel)
        self._consumer = consumer
        self.connected = asyncio.Event()

    async def run(self) -> None:
        backoff = 0.1
        while True:
            position = await self._consumer.position()
            try:
                stream = self._stub.StreamOrderEvents(
                    order_internal_pb2.StreamOrderEventsRequest(after_sequence=position),
                    wait_for_ready=True,
                )
                self.connected.set()
                async for response in stream:
                    await self._consumer.apply(
                        from_feed_message(response), position=response.sequence
                    )
                    backoff = 0.1
            except grpc.aio.AioRpcError as error:
                self.connected.clear()
                log.warning(
                    "order feed interrupted; reconnecting",
                    extra={"code": error.code().name, "retry_in_s": backoff},
                )
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)

    async def close(self) -> None:
        await self._channel.close()
