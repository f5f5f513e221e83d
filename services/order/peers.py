"""The order service's gRPC clients of user, product and payment (the use cases'
`Peers`), with their failures as domain errors.

Every call goes through `services.common.clients`, so it carries what remains of
the incoming deadline. A peer's expected failures (NOT_FOUND, FAILED_PRECONDITION,
...) reach our client with their status details intact; a peer that is down or
too slow becomes UNAVAILABLE or DEADLINE_EXCEEDED.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import grpc
from google.rpc import error_details_pb2, status_pb2

from services.common import clients, deadline
from services.common.config import BreakerSettings
from services.common.errors import DETAILS_KEY, DomainError, status_of
from services.common.tls import TlsSettings
from services.order.convert import product_from_proto, reserved_from_proto
from services.order.models import PricedProduct
from shop.common.v1 import money_pb2
from shop.payment.v1 import payment_internal_pb2, payment_internal_pb2_grpc, payment_pb2
from shop.product.v1 import (
    product_internal_pb2,
    product_internal_pb2_grpc,
    product_pb2,
    product_pb2_grpc,
)
from shop.user.v1 import user_internal_pb2, user_internal_pb2_grpc

PASSED_THROUGH = {
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
# Compensation must run even when the caller's deadline is spent.
RELEASE_TIMEOUT = 5.0
# The payment service's reasons for "the payment is in another state" (its ErrorInfo
# carries that state as metadata "state"): an answer about the payment, not a failure.
WRONG_PAYMENT_STATE = {"PAYMENT_NOT_AUTHORIZED", "PAYMENT_NOT_CAPTURED"}
# The state of a placed order's payment that a capture left as it was.
AUTHORIZED = "AUTHORIZED"


class PeerError(DomainError):
    """A peer's failure, relayed with its original status details."""

    def __init__(self, peer: str, error: grpc.aio.AioRpcError) -> None:
        code = error.code()
        self.status: status_pb2.Status | None = None
        sent = any(key == DETAILS_KEY for key, _ in error.trailing_metadata() or ())
        info = _error_info(status_of(error)) if sent else None
        metadata = {"peer": peer}
        if code in PASSED_THROUGH:
            message_text = error.details() or code.name.lower()
            if sent:
                self.status = status_of(error)
        else:
            code = grpc.StatusCode.UNAVAILABLE
            message_text = f"{peer} service is unavailable"
            if info is not None and info.reason:
                # What the peer said of its failure (PAYMENT_PROVIDER_UNAVAILABLE: the
                # provider did not answer), told apart from a peer that did not answer.
                metadata["peer_reason"] = info.reason
                info = None
        reason = f"{peer.upper()}_{code.name}"
        if clients.refused_by_breaker(error):
            # Not even tried: the peer failed too often just before.
            reason = f"{peer.upper()}_CIRCUIT_OPEN"
        if info is not None:
            # The peer's own reason and metadata (PAYMENT_DECLINED, its decline_code, ...),
            # for the use cases; what the client gets is the peer's status as it came.
            reason = info.reason or reason
            metadata = {**info.metadata, **metadata}
        super().__init__(message_text, reason, metadata, code=code)
        self.peer = peer

    def to_status(self) -> status_pb2.Status:
        if self.status is not None:
            return self.status
        return super().to_status()


class GrpcPeers:
    def __init__(
        self,
        user_addresses: str,
        product_addresses: str,
        payment_addresses: str,
        breaker: BreakerSettings,
        tls: TlsSettings | None = None,
    ) -> None:
        self._user_channel = clients.channel(user_addresses, peer="user", breaker=breaker, tls=tls)
        self._product_channel = clients.channel(
            product_addresses, peer="product", breaker=breaker, tls=tls
        )
        self._payment_channel = clients.channel(
            payment_addresses, peer="payment", breaker=breaker, tls=tls
        )
        self._users = user_internal_pb2_grpc.UserInternalServiceStub(self._user_channel)
        self._stock = product_internal_pb2_grpc.ProductInternalServiceStub(self._product_channel)
        self._products = product_pb2_grpc.ProductServiceStub(self._product_channel)
        self._payments = payment_internal_pb2_grpc.PaymentInternalServiceStub(self._payment_channel)

    async def close(self) -> None:
        await self._user_channel.close()
        await self._product_channel.close()
        await self._payment_channel.close()

    async def active_user(self, user_id: str) -> None:
        try:
            await self._users.ValidateUser(user_internal_pb2.ValidateUserRequest(user_id=user_id))
        except grpc.aio.AioRpcError as error:
            raise PeerError("user", error) from None

    async def reserve(self, reservation_id: str, items: Mapping[str, int]) -> list[PricedProduct]:
        request = product_internal_pb2.ReserveStockRequest(
            reservation_id=reservation_id,
            items=[
                product_internal_pb2.StockItem(product_id=pid, quantity=qty)
                for pid, qty in items.items()
            ],
        )
        try:
            response = await self._stock.ReserveStock(request)
        except grpc.aio.AioRpcError as error:
            raise PeerError("product", error) from None
        if len(response.products) != len(items):
            # A product service older than the priced answer (a rolling update that has
            # not reached it yet): the prices are read as they were before.
            return await self._prices(list(items))
        return [reserved_from_proto(product) for product in response.products]

    async def _prices(self, ids: list[str]) -> list[PricedProduct]:
        try:
            response = await self._products.BatchGetProducts(
                product_pb2.BatchGetProductsRequest(ids=ids)
            )
        except grpc.aio.AioRpcError as error:
            raise PeerError("product", error) from None
        return [product_from_proto(product) for product in response.products]

    async def release(self, reservation_id: str) -> None:
        """Releases with a timeout of its own: it runs after the caller's deadline too."""
        try:
            with deadline.detached():
                await self._stock.ReleaseStock(
                    product_internal_pb2.ReleaseStockRequest(reservation_id=reservation_id),
                    timeout=RELEASE_TIMEOUT,
                )
        except grpc.aio.AioRpcError as error:
            raise PeerError("product", error) from None

    # -- payment: every call is idempotent on the order id (gRPC's retry policy repeats
    # it on UNAVAILABLE, and the payment service then finds the earlier charge) -------

    async def authorize(
        self,
        order_id: str,
        user_id: str,
        currency_code: str,
        amount_minor: int,
        payment_method: str,
    ) -> None:
        request = payment_internal_pb2.AuthorizeRequest(
            order_id=order_id,
            user_id=user_id,
            amount=money_pb2.Money(currency_code=currency_code, amount_minor=amount_minor),
            payment_method=payment_method,
        )
        try:
            await self._payments.Authorize(request)
        except grpc.aio.AioRpcError as error:
            raise PeerError("payment", error) from None

    async def capture_all(self, order_ids: Sequence[str]) -> list[str | None]:
        """Runs with a timeout of its own: the orders are placed, their callers may be
        gone. A payment service older than CapturePayments (a rolling update that has
        not reached it yet) is asked with Capture, order by order."""
        request = payment_internal_pb2.CapturePaymentsRequest(order_ids=order_ids)
        try:
            with deadline.detached():
                reply = await self._payments.CapturePayments(request, timeout=RELEASE_TIMEOUT)
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.UNIMPLEMENTED:
                raise PeerError("payment", error) from None
            return [await self._capture_one(order_id) for order_id in order_ids]
        states = {
            outcome.order_id: (
                _state_name(outcome.payment.state) if outcome.HasField("payment") else None
            )
            for outcome in reply.outcomes
        }
        if states.keys() != set(order_ids):
            raise RuntimeError("CapturePayments answered for other orders than it was asked")
        return [states[order_id] for order_id in order_ids]

    async def _capture_one(self, order_id: str) -> str | None:
        """`capture_all` of one order with Capture. As there, one that fails does not
        fail the others: its payment is as it was (AUTHORIZED: the order was placed)."""
        request = payment_internal_pb2.CaptureRequest(order_id=order_id)
        try:
            with deadline.detached():
                reply = await self._payments.Capture(request, timeout=RELEASE_TIMEOUT)
        except grpc.aio.AioRpcError as error:
            try:
                return _payment_state_of(error)
            except PeerError:
                return AUTHORIZED
        return _state_name(reply.payment.state)

    async def void(self, order_id: str) -> str | None:
        """Compensation: runs after the caller's deadline too."""
        request = payment_internal_pb2.VoidRequest(order_id=order_id)
        try:
            with deadline.detached():
                reply = await self._payments.Void(request, timeout=RELEASE_TIMEOUT)
        except grpc.aio.AioRpcError as error:
            return _payment_state_of(error)
        return _state_name(reply.payment.state)

    async def refund(self, order_id: str, request_id: str, reason: str) -> str | None:
        request = payment_internal_pb2.RefundRequest(
            order_id=order_id, request_id=request_id, reason=reason
        )
        try:
            with deadline.detached():
                reply = await self._payments.Refund(request, timeout=RELEASE_TIMEOUT)
        except grpc.aio.AioRpcError as error:
            return _payment_state_of(error)
        return _state_name(reply.payment.state)


def _error_info(status: status_pb2.Status | None) -> error_details_pb2.ErrorInfo | None:
    """The ErrorInfo among a peer's status details, if it sent one."""
    for packed in status.details if status is not None else ():
        info = error_details_pb2.ErrorInfo()
        if packed.Unpack(info):
            return info
    return None


def _state_name(state: int) -> str:
    """PAYMENT_STATE_CAPTURED -> "CAPTURED", as the payment service names its states."""
    return payment_pb2.PaymentState.Name(state).removeprefix("PAYMENT_STATE_")


def _payment_state_of(error: grpc.aio.AioRpcError) -> str | None:
    """A Capture, Void or Refund the payment's state did not allow: that state (None when
    the order has no payment). Any other failure is raised as a PeerError."""
    if error.code() == grpc.StatusCode.NOT_FOUND:
        return None
    if error.code() == grpc.StatusCode.FAILED_PRECONDITION:
        for packed in status_of(error).details:
            info = error_details_pb2.ErrorInfo()
            if packed.Unpack(info) and info.reason in WRONG_PAYMENT_STATE:
                state = str(info.metadata.get("state", ""))
                if state:
                    return state
    raise PeerError("payment", error)
