"""The order service's one place where orders become protos (replies, the events of
orders and of their payments, the feed's messages) and where a peer's product becomes
what an order needs of it."""

from __future__ import annotations

from services.common.events.envelope import Event
from services.common.events.feed import Heartbeat, feed_message, outbox_event, subjects
from services.common.ids import new_id
from services.common.times import to_timestamp, utcnow
from services.order.models import (
    CANCELLED,
    PAYMENT_DECLINED,
    OrderRow,
    PaymentFailure,
    PricedProduct,
)
from shop.common.v1 import money_pb2
from shop.order.v1 import events_pb2, order_internal_pb2, order_pb2
from shop.product.v1 import product_internal_pb2, product_pb2

# Every order event is a field of the feed message's `event` oneof, which names its subject.
SUBJECTS = subjects(order_internal_pb2.StreamOrderEventsResponse)


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


def order_created(order: OrderRow) -> Event:
    """The OrderCreated event of an order just placed, as the outbox stores it."""
    return _event(
        events_pb2.OrderCreated(
            event_id=new_id("evt"),
            order=order_to_proto(order),
            occurred_at=to_timestamp(order.update_time),
        )
    )


def order_cancelled(order: OrderRow) -> Event:
    """The OrderCancelled event of an order just cancelled, as the outbox stores it."""
    return _event(
        events_pb2.OrderCancelled(
            event_id=new_id("evt"),
            order=order_to_proto(order),
            occurred_at=to_timestamp(order.update_time),
        )
    )


def payment_refunded(order: OrderRow, request_id: str, *, voided: bool) -> Event:
    """The PaymentRefunded event of a cancelled order whose payment was just given back
    (refunded under `request_id`, or its hold released when `voided`)."""
    return _event(
        events_pb2.PaymentRefunded(
            event_id=new_id("evt"),
            occurred_at=to_timestamp(utcnow()),
            order_id=order.id,
            user_id=order.user_id,
            amount=_total(order),
            refund_request_id=request_id,
            reason=order.cancel_reason,
            voided=voided,
        )
    )


def payment_failed(order: OrderRow, failure: PaymentFailure) -> Event:
    """The PaymentFailed event of an order attempt given up because its payment failed."""
    return _event(
        events_pb2.PaymentFailed(
            event_id=new_id("evt"),
            occurred_at=to_timestamp(utcnow()),
            order_id=order.id,
            user_id=order.user_id,
            idempotency_key=order.idempotency_key,
            amount=_total(order),
            payment_method=failure.payment_method,
            failure=(
                events_pb2.PAYMENT_FAILURE_DECLINED
                if failure.kind == PAYMENT_DECLINED
                else events_pb2.PAYMENT_FAILURE_UNAVAILABLE
            ),
            decline_code=failure.decline_code,
        )
    )


def _total(order: OrderRow) -> money_pb2.Money:
    return money_pb2.Money(currency_code=order.currency_code, amount_minor=order.total_amount_minor)


_EventMessage = (
    events_pb2.OrderCreated
    | events_pb2.OrderCancelled
    | events_pb2.PaymentRefunded
    | events_pb2.PaymentFailed
)


def _event(message: _EventMessage) -> Event:
    return outbox_event(message, SUBJECTS)


def to_feed_message(event: Event | Heartbeat) -> order_internal_pb2.StreamOrderEventsResponse:
    """An outbox event (or a heartbeat) as the embedded feed streams it."""
    return feed_message(order_internal_pb2.StreamOrderEventsResponse, event)


def reserved_from_proto(product: product_internal_pb2.ReservedProduct) -> PricedProduct:
    return _priced(product.product_id, product.name, product.price)


def product_from_proto(product: product_pb2.Product) -> PricedProduct:
    """A product service's product (BatchGetProducts) as the order prices it."""
    return _priced(product.id, product.name, product.price)


def _priced(product_id: str, name: str, price: money_pb2.Money) -> PricedProduct:
    return PricedProduct(
        id=product_id, name=name, currency_code=price.currency_code, amount_minor=price.amount_minor
    )
