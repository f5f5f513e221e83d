"""gRPC servicers of the order service, and its wiring: peers, outbox relay, sweeper."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import grpc

from services.common.auth import require_owner
from services.common.config import DEFAULT_PORTS
from services.common.events.nats import Bus, NatsSink, connect_on_start
from services.common.events.order_feed import to_feed_message
from services.common.events.outbox import NoSink, Relay
from services.common.interceptors import Context
from services.common.server import Runtime, ServiceSpec
from services.order.convert import order_to_proto
from services.order.feed import Feed
from services.order.models import OutboxRow
from services.order.peers import Peers
from services.order.service import Line, Orders
from shop.order.v1 import order_internal_pb2, order_internal_pb2_grpc, order_pb2, order_pb2_grpc


class OrderServicer(order_pb2_grpc.OrderServiceServicer):
    def __init__(self, orders: Orders) -> None:
        self._orders = orders

    async def CreateOrder(
        self, request: order_pb2.CreateOrderRequest, context: Context
    ) -> order_pb2.CreateOrderResponse:
        require_owner(request.user_id)
        lines = [Line(item.product_id, item.quantity) for item in request.items]
        order = await self._orders.create(request.user_id, lines, request.idempotency_key)
        return order_pb2.CreateOrderResponse(order=order_to_proto(order))

    async def GetOrder(
        self, request: order_pb2.GetOrderRequest, context: Context
    ) -> order_pb2.GetOrderResponse:
        order = await self._orders.get(request.id)
        require_owner(order.user_id)
        return order_pb2.GetOrderResponse(order=order_to_proto(order))

    async def ListOrders(
        self, request: order_pb2.ListOrdersRequest, context: Context
    ) -> order_pb2.ListOrdersResponse:
        require_owner(request.user_id)
        size = request.page_size if request.HasField("page_size") else None
        rows, next_token = await self._orders.list_page(request.user_id, size, request.page_token)
        return order_pb2.ListOrdersResponse(
            orders=[order_to_proto(o) for o in rows], next_page_token=next_token
        )

    async def CancelOrder(
        self, request: order_pb2.CancelOrderRequest, context: Context
    ) -> order_pb2.CancelOrderResponse:
        require_owner((await self._orders.get(request.id)).user_id)
        order = await self._orders.cancel(request.id, request.reason)
        return order_pb2.CancelOrderResponse(order=order_to_proto(order))


class OrderInternalServicer(order_internal_pb2_grpc.OrderInternalServiceServicer):
    def __init__(self, feed: Feed) -> None:
        self._feed = feed

    async def StreamOrderEvents(
        self, request: order_internal_pb2.StreamOrderEventsRequest, context: Context
    ) -> AsyncIterator[order_internal_pb2.StreamOrderEventsResponse]:
        async for event in self._feed.events(request.after_sequence):
            yield to_feed_message(event)


def register(server: grpc.aio.Server, runtime: Runtime) -> Sequence[str]:
    config = runtime.config
    peers = Peers(config.peer("user"), config.peer("product"), config.breaker, config.tls)
    feed = Feed(runtime.db)

    async def published() -> None:
        feed.published.fire()

    relay = Relay(runtime.db, OutboxRow, NoSink(), name="order", on_published=published)
    orders = Orders(
        runtime.db,
        peers,
        runtime.page_tokens,
        relay,
        attempt_timeout=config.order_attempt_timeout,
    )

    if config.broker_url:

        def publish_to(bus: Bus) -> None:
            relay.sink = NatsSink(bus)

        connect_on_start(runtime, "shop-order", publish_to)

    runtime.components.update(orders=orders, relay=relay, feed=feed)
    runtime.metrics.gauge(
        "outbox_backlog_events", "Committed events not yet published.", lambda: relay.backlog
    )
    runtime.metrics.gauge(
        "outbox_oldest_unsent_age_seconds",
        "Age of the oldest committed event not yet published (0 when none).",
        relay.oldest_unsent_age,
    )
    runtime.background += [relay.run, orders.run_sweeper]
    runtime.closers.append(peers.close)
    order_pb2_grpc.add_OrderServiceServicer_to_server(OrderServicer(orders), server)
    order_internal_pb2_grpc.add_OrderInternalServiceServicer_to_server(
        OrderInternalServicer(feed), server
    )
    return [
        order_pb2.DESCRIPTOR.services_by_name["OrderService"].full_name,
        order_internal_pb2.DESCRIPTOR.services_by_name["OrderInternalService"].full_name,
    ]


SPEC = ServiceSpec(
    name="order",
    default_port=DEFAULT_PORTS["order"],
    migrations=Path(__file__).parent / "migrations",
    register=register,
)
