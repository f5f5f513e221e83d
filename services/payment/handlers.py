"""gRPC handlers of the payment service: the caller's rights and the proto in, a use case,
the proto out; nothing else."""

from __future__ import annotations

from services.common.auth import require_owner
from services.common.interceptors import Context
from services.payment.convert import payment_to_proto, request_from_proto
from services.payment.usecases import Payments
from shop.payment.v1 import (
    payment_internal_pb2,
    payment_internal_pb2_grpc,
    payment_pb2,
    payment_pb2_grpc,
)


class PaymentServicer(payment_pb2_grpc.PaymentServiceServicer):
    def __init__(self, payments: Payments) -> None:
        self._payments = payments

    async def GetPayment(
        self, request: payment_pb2.GetPaymentRequest, context: Context
    ) -> payment_pb2.GetPaymentResponse:
        payment = await self._payments.get(request.id)
        require_owner(payment.user_id)
        return payment_pb2.GetPaymentResponse(payment=payment_to_proto(payment))

    async def ListPayments(
        self, request: payment_pb2.ListPaymentsRequest, context: Context
    ) -> payment_pb2.ListPaymentsResponse:
        require_owner(request.user_id)
        size = request.page_size if request.HasField("page_size") else None
        rows, next_token = await self._payments.list_page(
            request.user_id, request.order_id, size, request.page_token
        )
        return payment_pb2.ListPaymentsResponse(
            payments=[payment_to_proto(p) for p in rows], next_page_token=next_token
        )


class PaymentInternalServicer(payment_internal_pb2_grpc.PaymentInternalServiceServicer):
    def __init__(self, payments: Payments) -> None:
        self._payments = payments

    async def Authorize(
        self, request: payment_internal_pb2.AuthorizeRequest, context: Context
    ) -> payment_internal_pb2.AuthorizeResponse:
        payment = await self._payments.authorize(request_from_proto(request))
        return payment_internal_pb2.AuthorizeResponse(payment=payment_to_proto(payment))

    async def Capture(
        self, request: payment_internal_pb2.CaptureRequest, context: Context
    ) -> payment_internal_pb2.CaptureResponse:
        payment = await self._payments.capture(request.order_id)
        return payment_internal_pb2.CaptureResponse(payment=payment_to_proto(payment))

    async def CapturePayments(
        self, request: payment_internal_pb2.CapturePaymentsRequest, context: Context
    ) -> payment_internal_pb2.CapturePaymentsResponse:
        payments = await self._payments.capture_all(request.order_ids)
        return payment_internal_pb2.CapturePaymentsResponse(
            outcomes=[
                payment_internal_pb2.CaptureOutcome(
                    order_id=order_id,
                    payment=None if payment is None else payment_to_proto(payment),
                )
                for order_id, payment in zip(request.order_ids, payments, strict=True)
            ]
        )

    async def Void(
        self, request: payment_internal_pb2.VoidRequest, context: Context
    ) -> payment_internal_pb2.VoidResponse:
        payment = await self._payments.void(request.order_id)
        return payment_internal_pb2.VoidResponse(payment=payment_to_proto(payment))

    async def Refund(
        self, request: payment_internal_pb2.RefundRequest, context: Context
    ) -> payment_internal_pb2.RefundResponse:
        payment, refunded = await self._payments.refund(
            request.order_id, request.request_id, request.reason
        )
        return payment_internal_pb2.RefundResponse(
            payment=payment_to_proto(payment), refunded=refunded
        )
