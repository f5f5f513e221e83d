"""Order rows as protos (for replies and for event snapshots)."""

from __future__ import annotations

from services.common.times import to_timestamp
from services.order.models import CANCELLED, OrderRow
from shop.common.v1 import money_pb2
from shop.order.v1 import order_pb2


def order_to_proto(order: OrderRow) -> order_pb2.Order:
    def money(amount: int) -> money_pb2.Money:
        return money_pb2.Money(currency_code=order.currency_code, amount_minor=amount)

    return order_pb2.Order(
        id=order.id,
        user_id=order.user_id,
        items=[
            order_pb2.OrderItem(
                product_id=item.product_id,
                product_name=item.product_name,
                quantity=item.quantity,
                unit_price=money(item.unit_amount_minor),
                line_total=money(item.line_amount_minor),
            )
            for item in order.items
        ],
        total=money(order.total_amount_minor),
        status=(
            order_pb2.ORDER_STATUS_CANCELLED
            if order.status == CANCELLED
            else order_pb2.ORDER_STATUS_PLACED
        ),
        create_time=to_timestamp(order.create_time),
        update_time=to_timestamp(order.update_time),
        cancel_reason=order.cancel_reason,
    )
