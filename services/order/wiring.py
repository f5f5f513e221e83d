"""Builds the order service from the platform, explicitly and in order."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from services.common.events.feed import Feed
from services.common.events.nats import NatsSink, connect_broker
from services.common.events.outbox import NoSink, Relay, Sink
from services.common.server import Platform, Servicer, ServiceSpec, Wired
from services.order.handlers import OrderInternalServicer, OrderServicer
from services.order.models import OutboxRow
from services.order.peers import GrpcPeers
from services.order.repository import SqlOrderRepository
from services.order.usecases import Orders
from shop.order.v1 import order_internal_pb2, order_internal_pb2_grpc, order_pb2, order_pb2_grpc


@dataclass(frozen=True)
class OrderParts:
    orders: Orders
    # Publishes the outbox (to NATS when BROKER_URL is set) and stamps feed positions.
    relay: Relay
    feed: Feed


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
    feed = Feed(repository.published_after)

    relay = Relay(platform.db, OutboxRow, sink, name="order", on_published=feed.on_published)
    orders = Orders(
        repository,
        peers,
        platform.page_tokens,
        events_committed=relay.wake,
        attempt_timeout=config.order_attempt_timeout,
    )
    relay.export(platform.metrics)
    return Wired(
        parts=OrderParts(orders=orders, relay=relay, feed=feed),
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
        background=[relay.run, orders.run_sweeper],
        closers=closers,
    )


SPEC = ServiceSpec(name="order", migrations=Path(__file__).parent / "migrations", wire=wire)
