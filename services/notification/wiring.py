"""Builds the notification service from the platform, explicitly and in order."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from services.common import clients
from services.common.events.consumer import Consumer
from services.common.events.feed import FeedFollower, opener
from services.common.events.nats import NatsSource, connect_broker
from services.common.metrics import Metrics
from services.common.server import Platform, Servicer, ServiceSpec, Wired
from services.notification import order_events
from services.notification.handlers import NotificationServicer
from services.notification.hub import Hub
from services.notification.models import ConsumerPositionRow, ProcessedEventRow
from services.notification.repository import SqlNotificationRepository
from services.notification.usecases import Notifications
from services.notification.wakeups import Listener
from shop.notification.v1 import notification_pb2, notification_pb2_grpc
from shop.order.v1 import order_internal_pb2, order_internal_pb2_grpc

# The durable name of the order-event consumer (processed events, NATS consumer).
CONSUMER = "notification"
BROKER_CLIENT = "shop-notification"
# Seconds between the order feed's heartbeats: a hung order service (its connection up)
# is noticed after a few missed ones, and its feed opened again after ten.
HEARTBEAT = 1.0


@dataclass(frozen=True)
class NotificationParts:
    consumer: Consumer
    hub: Hub
    notifications: Notifications
    # The order feed followed when there is no broker (None with one).
    order_feed: FeedFollower | None


async def wire(platform: Platform) -> Wired[NotificationParts]:
    config, db = platform.config, platform.db
    repository = SqlNotificationRepository(db)
    hub = Hub(max_streams=config.max_streams)
    notifications = Notifications(repository, platform.page_tokens, hub)
    consumer = Consumer(
        db,
        CONSUMER,
        order_events.handler(notifications, repository.store_in),
        ProcessedEventRow,
        ConsumerPositionRow,
    )
    background: list[Callable[[], Awaitable[None]]] = []
    closers: list[Callable[[], object]] = []
    order_feed: FeedFollower | None = None
    if not db.is_sqlite:
        # Wake-ups from the other replicas' commits (PostgreSQL LISTEN).
        background.append(Listener(config.database_url, hub).run)
    if config.broker_url:
        bus = await connect_broker(config, BROKER_CLIENT)
        closers.append(bus.client.close)
        background.append(NatsSource(bus, consumer).run)
    else:
        channel = clients.channel(config.peer("order"), default_timeout=None, tls=config.tls)
        closers.append(channel.close)
        stream = order_internal_pb2_grpc.OrderInternalServiceStub(channel).StreamOrderEvents
        feed = opener(stream, order_internal_pb2.StreamOrderEventsRequest, HEARTBEAT)
        order_feed = FeedFollower("order", feed, consumer)
        background.append(order_feed.run)
        _following(platform.metrics, order_feed)
    _gauges(platform.metrics, hub, consumer)
    return Wired(
        parts=NotificationParts(
            consumer=consumer, hub=hub, notifications=notifications, order_feed=order_feed
        ),
        servicers=[
            Servicer(
                notification_pb2.DESCRIPTOR.services_by_name["NotificationService"],
                NotificationServicer(notifications),
                notification_pb2_grpc.add_NotificationServiceServicer_to_server,
            )
        ],
        background=background,
        closers=closers,
    )


def _following(metrics: Metrics, order_feed: FeedFollower) -> None:
    metrics.gauge(
        "order_feed_following",
        "1 while the order feed is followed and heard from (its events are all in, up to a"
        " heartbeat's head, and the last heartbeat is recent); event_consumer_lag_seconds"
        " is only current while it is.",
        lambda: float(order_feed.following()),
    )


def _gauges(metrics: Metrics, hub: Hub, consumer: Consumer) -> None:
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


SPEC = ServiceSpec(name="notification", migrations=Path(__file__).parent / "migrations", wire=wire)
