"""The payment service's one place where stored payments become protos, and where request
protos become the use cases' inputs."""

from __future__ import annotations

from services.common.times import to_timestamp
from services.payment.models import (
    AUTHORIZED,
    CAPTURED,
    DECLINED,
    FAILED,
    REFUNDED,
    VOIDED,
    Amount,
    PaymentRequest,
    PaymentRow,
)
from shop.common.v1 import money_pb2
from shop.payment.v1 import payment_internal_pb2, payment_pb2

STATES = {
    AUTHORIZED: payment_pb2.PAYMENT_STATE_AUTHORIZED,
    CAPTURED: payment_pb2.PAYMENT_STATE_CAPTURED,
    VOIDED: payment_pb2.PAYMENT_STATE_VOIDED,
    REFUNDED: payment_pb2.PAYMENT_STATE_REFUNDED,
    DECLINED: payment_pb2.PAYMENT_STATE_DECLINED,
    FAILED: payment_pb2.PAYMENT_STATE_FAILED,
}


def payment_to_proto(payment: PaymentRow) -> payment_pb2.Payment:
    return payment_pb2.Payment(
        id=payment.id,
        order_id=payment.order_id,
        user_id=payment.user_id,
        amount=money_pb2.Money(
            currency_code=payment.amount_currency, amount_minor=payment.amount_minor
        ),
        state=STATES[payment.state],
        payment_method=payment.payment_method,
        provider_reference=payment.provider_reference,
        create_time=to_timestamp(payment.create_time),
        update_time=to_timestamp(payment.update_time),
        failure_reason=payment.failure_reason,
        refund_request_id=payment.refund_request_id,
        refund_reason=payment.refund_reason,
    )


def request_from_proto(request: payment_internal_pb2.AuthorizeRequest) -> PaymentRequest:
    return PaymentRequest(
        order_id=request.order_id,
        user_id=request.user_id,
        amount=Amount(
            currency_code=request.amount.currency_code, amount_minor=request.amount.amount_minor
        ),
        payment_method=request.payment_method,
    )
