"""Builds the order service from the platform, explicitly and in order."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from services.common import clients
from services.common.events.consumer import Consumer
from services.common.events.feed import Feed, FeedFollower, OutboxReader, opener
from services.common.events.nats import NatsSink, connect_broker
from services.common.events.outbox import NoSink, Relay, Sink
from services.common.server import Platform, Servicer, ServiceSpec, Wired
from services.order import users
from services.order.handlers import OrderInternalServicer, OrderServicer
from services.order.models import ConsumerPositionRow, OutboxRow, ProcessedEventRow
from services.order.peers import GrpcPeers
from services.order.repository import SqlOrderRepository
from services.order.usecases import Orders
from services.order.users import UserCheck, UserStatuses
from shop.order.v1 import order_internal_pb2, order_internal_pb2_grpc, order_pb2, order_pb2_grpc
from shop.user.v1 import user_internal_pb2, user_internal_pb2_grpc


@dataclass(frozen=True)
class OrderParts:
    orders: Orders
    # Publishes the outbox (to NATS when BROKER_URL is set) and stamps feed positions.
    relay: Relay
    feed: Feed
    # Follows the user service's feed into the replica of users' statuses; its
    # following() says whether the replica is kept up right now.
    user_feed: FeedFollower


async def wire(platform: Platform) -> Wired[OrderParts]:
    config = platform.config
    closers: list[Callable[[], object]] = []
    repository = SqlOrderRepository(platform.db)
    peers = GrpcPeers(
        config.peer("user"),
        config.peer("product"),
        config.peer("payment"),
        config.breaker,
        config.tls,
    )
    closers.append(peers.close)
    # Without a broker the outbox itself is the log consumers read (the embedded feed).
    sink: Sink = NoSink()
    if config.broker_url:
        bus = await connect_broker(config, "shop-order")
        closers.append(bus.client.close)
        sink = NatsSink(bus)
    feed = Feed(OutboxReader(platform.db, OutboxRow))
    # Who may order, kept from the user service's events (its feed, whatever the broker).
    statuses = UserStatuses(platform.db)
    consumer = Consumer(
        platform.db, users.CONSUMER, statuses.handle, ProcessedEventRow, ConsumerPositionRow
    )
    channel = clients.channel(config.peer("user"), default_timeout=None, tls=config.tls)
    closers.append(channel.close)
    stream = user_internal_pb2_grpc.UserInternalServiceStub(channel).StreamUserEvents
    request = user_internal_pb2.StreamUserEventsRequest
    follower = FeedFollower("user", opener(stream, request, users.HEARTBEAT), consumer)
    check = UserCheck(statuses, peers.active_user, follower.following)
    check.export(platform.metrics)
    relay = Relay(platform.db, OutboxRow, sink, name="order", on_published=feed.on_published)
    orders = Orders(
        repository,
        peers,
        platform.page_tokens,
        events_committed=relay.wake,
        attempt_timeout=config.order_attempt_timeout,
        active_user=check.active_user,
    )
    relay.export(platform.metrics)
    platform.metrics.gauge(
        "payment_captures", "Captures asked of the payment service.", lambda: orders.captures.keys
    )
    platform.metrics.gauge(
        "payment_capture_calls",
        "CapturePayments calls that took them (captures per call: how much load shared).",
        lambda: orders.captures.batches,
    )
    return Wired(
        parts=OrderParts(orders=orders, relay=relay, feed=feed, user_feed=follower),
        servicers=[
            Servicer(
                order_pb2.DESCRIPTOR.services_by_name["OrderService"],
                OrderServicer(orders),
                order_pb2_grpc.add_OrderServiceServicer_to_server,
            ),
            Servicer(
                order_internal_pb2.DESCRIPTOR.services_by_name["OrderInternalService"],
                OrderInternalServicer(feed),
                order_internal_pb2_grpc.add_OrderInternalServiceServicer_to_server,
            ),
        ],
        background=[relay.run, orders.run_sweeper, follower.run],
        closers=closers,
    )


SPEC = ServiceSpec(name="order", migrations=Path(__file__).parent / "migrations", wire=wire)
