"""The order service's events: their subjects, and the embedded feed a consumer follows."""

from __future__ import annotations

import asyncio
import logging

import grpc

from services.common import clients
from services.common.events.consumer import Consumer
from services.common.events.envelope import Event
from services.common.tls import TlsSettings
from shop.order.v1 import events_pb2, order_internal_pb2, order_internal_pb2_grpc

log = logging.getLogger("shop.feed")

ORDER_CREATED = "order.created"
ORDER_CANCELLED = "order.cancelled"

# Logical subject <-> the oneof field of StreamOrderEventsResponse <-> the message.
FIELDS = {ORDER_CREATED: "order_created", ORDER_CANCELLED: "order_cancelled"}
MESSAGES: dict[str, type[events_pb2.OrderCreated] | type[events_pb2.OrderCancelled]] = {
    ORDER_CREATED: events_pb2.OrderCreated,
    ORDER_CANCELLED: events_pb2.OrderCancelled,
}


def to_feed_message(event: Event) -> order_internal_pb2.StreamOrderEventsResponse:
    response = order_internal_pb2.StreamOrderEventsResponse(
        sequence=event.sequence, headers=dict(event.headers)
    )
    getattr(response, FIELDS[event.subject]).ParseFromString(event.payload)
    return response


def from_feed_message(response: order_internal_pb2.StreamOrderEventsResponse) -> Event:
    field = response.WhichOneof("event")
    subject = next(s for s, f in FIELDS.items() if f == field)
    message = getattr(response, field)
    return Event(
        event_id=message.event_id,
        subject=subject,
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
