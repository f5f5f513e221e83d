"""The notification service's one place where stored notifications become protos, and
where an event of the order service's contract (an order, or its payment) becomes the use
cases' OrderEvent."""

from __future__ import annotations

from services.common.times import to_timestamp
from services.notification import models
from services.notification.models import NotificationRow, OrderEvent
from shop.notification.v1 import notification_pb2
from shop.order.v1 import events_pb2, order_pb2

KINDS = {
    models.ORDER_PLACED: notification_pb2.NOTIFICATION_KIND_ORDER_PLACED,
    models.ORDER_CANCELLED: notification_pb2.NOTIFICATION_KIND_ORDER_CANCELLED,
    models.PAYMENT_REFUNDED: notification_pb2.NOTIFICATION_KIND_PAYMENT_REFUNDED,
    models.PAYMENT_FAILED: notification_pb2.NOTIFICATION_KIND_PAYMENT_FAILED,
}
FAILURES = {
    events_pb2.PAYMENT_FAILURE_DECLINED: models.DECLINED,
    events_pb2.PAYMENT_FAILURE_UNAVAILABLE: models.UNAVAILABLE,
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


def refund_event(event_id: str, refunded: events_pb2.PaymentRefunded) -> OrderEvent:
    """What the PAYMENT_REFUNDED notification says of a refund."""
    return OrderEvent(
        event_id=event_id,
        kind=models.PAYMENT_REFUNDED,
        order_id=refunded.order_id,
        user_id=refunded.user_id,
        item_count=0,
        total_minor=refunded.amount.amount_minor,
        currency=refunded.amount.currency_code,
        cancel_reason=refunded.reason,
        voided=refunded.voided,
    )


def failure_event(event_id: str, failed: events_pb2.PaymentFailed) -> OrderEvent:
    """What the PAYMENT_FAILED notification says of an attempt given up at its payment
    (a failure this build does not know reads as UNAVAILABLE: it was not completed)."""
    return OrderEvent(
        event_id=event_id,
        kind=models.PAYMENT_FAILED,
        order_id=failed.order_id,
        user_id=failed.user_id,
        item_count=0,
        total_minor=failed.amount.amount_minor,
        currency=failed.amount.currency_code,
        failure=FAILURES.get(failed.failure, models.UNAVAILABLE),
        decline_code=failed.decline_code,
    )
