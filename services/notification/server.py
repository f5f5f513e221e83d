"""gRPC servicers of the notification service, and its wiring: the event consumer
(embedded feed or NATS) and the live hub."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import grpc

from services.common.auth import require_owner
from services.common.config import DEFAULT_PORTS
from services.common.events.consumer import Consumer
from services.common.events.nats import Bus, NatsSource, connect_on_start
from services.common.events.order_feed import FeedSource
from services.common.interceptors import Context
from services.common.server import Runtime, ServiceSpec
from services.common.times import to_timestamp
from services.notification import models
from services.notification.hub import Hub
from services.notification.models import ConsumerPositionRow, NotificationRow, ProcessedEventRow
from services.notification.service import Notifications
from services.notification.wakeups import Listener
from shop.notification.v1 import notification_pb2, notification_pb2_grpc

CONSUMER = "notification"
KINDS = {
    models.ORDER_PLACED: notification_pb2.NOTIFICATION_KIND_ORDER_PLACED,
    models.ORDER_CANCELLED: notification_pb2.NOTIFICATION_KIND_ORDER_CANCELLED,
}


def to_proto(row: NotificationRow) -> notification_pb2.Notification:
    return notification_pb2.Notification(
        id=row.id,
        user_id=row.user_id,
        kind=KINDS.get(row.kind, notification_pb2.NOTIFICATION_KIND_UNSPECIFIED),
        title=row.title,
        body=row.body,
        order_id=row.order_id,
        event_id=row.event_id,
        read=row.read,
        create_time=to_timestamp(row.create_time),
        read_time=to_timestamp(row.read_time),
    )


class NotificationServicer(notification_pb2_grpc.NotificationServiceServicer):
    def __init__(self, notifications: Notifications) -> None:
        self._notifications = notifications

    async def ListNotifications(
        self, request: notification_pb2.ListNotificationsRequest, context: Context
    ) -> notification_pb2.ListNotificationsResponse:
        require_owner(request.user_id)
        size = request.page_size if request.HasField("page_size") else None
        rows, next_token = await self._notifications.list_page(
            request.user_id, request.unread_only, size, request.page_token
        )
        return notification_pb2.ListNotificationsResponse(
            notifications=[to_proto(r) for r in rows], next_page_token=next_token
        )

    async def MarkRead(
        self, request: notification_pb2.MarkReadRequest, context: Context
    ) -> notification_pb2.MarkReadResponse:
        require_owner(request.user_id)
        rows = await self._notifications.mark_read(request.user_id, list(request.notification_ids))
        return notification_pb2.MarkReadResponse(notifications=[to_proto(r) for r in rows])

    async def StreamNotifications(
        self, request: notification_pb2.StreamNotificationsRequest, context: Context
    ) -> AsyncIterator[notification_pb2.StreamNotificationsResponse]:
        require_owner(request.user_id)
        async for row in self._notifications.stream(request.user_id, request.cursor):
            yield notification_pb2.StreamNotificationsResponse(
                notification=to_proto(row),
                cursor=self._notifications.cursor_of(request.user_id, row),
            )


def register(server: grpc.aio.Server, runtime: Runtime) -> Sequence[str]:
    config = runtime.config
    hub = Hub(max_streams=config.max_streams)
    if not runtime.db.is_sqlite:
        runtime.background.append(Listener(config.database_url, hub).run)
    notifications = Notifications(runtime.db, runtime.page_tokens, hub)
    consumer = Consumer(
        runtime.db, CONSUMER, notifications.handle, ProcessedEventRow, ConsumerPositionRow
    )
    runtime.components.update(consumer=consumer, hub=hub, notifications=notifications)
    metrics = runtime.metrics
    metrics.gauge(
        "notification_open_streams", "Open StreamNotifications calls.", lambda: hub.open_streams
    )
    metrics.gauge(
        "event_consumer_lag_seconds",
        "Seconds from commit to apply of the last order event received.",
        lambda: consumer.lag_seconds,
    )
    metrics.gauge(
        "event_consumer_applied", "Order events applied since start.", lambda: consumer.applied
    )
    metrics.gauge(
        "event_consumer_duplicates",
        "Order events received again and skipped since start.",
        lambda: consumer.duplicates,
    )
    if config.broker_url:

        def consume_from(bus: Bus) -> None:
            runtime.background.append(NatsSource(bus, consumer).run)

        connect_on_start(runtime, "shop-notification", consume_from)
    else:
        feed = FeedSource(config.peer("order"), consumer, config.tls)
        runtime.background.append(feed.run)
        runtime.closers.append(feed.close)

    notification_pb2_grpc.add_NotificationServiceServicer_to_server(
        NotificationServicer(notifications), server
    )
    return [notification_pb2.DESCRIPTOR.services_by_name["NotificationService"].full_name]


SPEC = ServiceSpec(
    name="notification",
    default_port=DEFAULT_PORTS["notification"],
    migrations=Path(__file__).parent / "migrations",
    register=register,
)
