"""gRPC handlers of the order service: the caller's rights and the proto in, a use case,
the proto out; nothing else."""

from __future__ import annotations

from collections.abc import AsyncIterator

from services.common.auth import require_owner
from services.common.events.feed import Feed, heartbeat_interval
from services.common.interceptors import Context
from services.order.convert import order_to_proto, to_feed_message
from services.order.models import Line
from services.order.usecases import Orders
from shop.order.v1 import order_internal_pb2, order_internal_pb2_grpc, order_pb2, order_pb2_grpc


class OrderServicer(order_pb2_grpc.OrderServiceServicer):
    def __init__(self, orders: Orders) -> None:
        self._orders = orders

    async def CreateOrder(
        self, request: order_pb2.CreateOrderRequest, context: Context
    ) -> order_pb2.CreateOrderResponse:
        require_owner(request.user_id)
        lines = [Line(item.product_id, item.quantity) for item in request.items]
        order = await self._orders.create(
            request.user_id, lines, request.idempotency_key, request.payment_method
        )
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
        heartbeat = heartbeat_interval(request)
        await self._feed.open(context, heartbeat)
        async for item in self._feed.events_and_heartbeats(request.after_sequence, heartbeat):
            yield to_feed_message(item)
