"""The notification service's one place where stored notifications become protos, and
where an order from the order service's contract becomes the use cases' OrderEvent."""

from __future__ import annotations

from services.common.times import to_timestamp
from services.notification import models
from services.notification.models import NotificationRow, OrderEvent
from shop.notification.v1 import notification_pb2
from shop.order.v1 import order_pb2

KINDS = {
    models.ORDER_PLACED: notification_pb2.NOTIFICATION_KIND_ORDER_PLACED,
    models.ORDER_CANCELLED: notification_pb2.NOTIFICATION_KIND_ORDER_CANCELLED,
}


def notification_to_proto(row: NotificationRow) -> notification_pb2.Notification:
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


def order_event(event_id: str, kind: str, order: order_pb2.Order) -> OrderEvent:
    """What the notification of kind `kind` says of `order`."""
    return OrderEvent(
        event_id=event_id,
        kind=kind,
        order_id=order.id,
        user_id=order.user_id,
        item_count=sum(item.quantity for item in order.items),
        total_minor=order.total.amount_minor,
        currency=order.total.currency_code,
        cancel_reason=order.cancel_reason,
    )
