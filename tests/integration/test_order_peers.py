"""The order service's clients against peers of two versions (a rolling update reaches
the services one by one, in any order): a product service that prices its reservations
and one from before; a payment service that captures in batches and one from before."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from services.common.config import BreakerSettings
from services.common.errors import (
    DETAILS_KEY,
    DomainError,
    FailedPrecondition,
    NotFound,
    Unavailable,
)
from services.order.models import PricedProduct
from services.order.peers import GrpcPeers
from shop.common.v1 import money_pb2
from shop.payment.v1 import payment_internal_pb2, payment_internal_pb2_grpc, payment_pb2
from shop.product.v1 import (
    product_internal_pb2,
    product_internal_pb2_grpc,
    product_pb2,
    product_pb2_grpc,
)

MUG = product_pb2.Product(
    id="prd_mug", name="Mug", price=money_pb2.Money(currency_code="EUR", amount_minor=1299)
)
TEA = product_pb2.Product(
    id="prd_tea", name="Tea", price=money_pb2.Money(currency_code="EUR", amount_minor=450)
)
CATALOGUE = {p.id: p for p in (MUG, TEA)}


class Stock(product_internal_pb2_grpc.ProductInternalServiceServicer):
    def __init__(self, priced: bool) -> None:
        self.priced = priced

    async def ReserveStock(
        self, request: product_internal_pb2.ReserveStockRequest, context: object
    ) -> product_internal_pb2.ReserveStockResponse:
        reservation = product_internal_pb2.Reservation(
            reservation_id=request.reservation_id,
            items=request.items,
            state=product_internal_pb2.RESERVATION_STATE_RESERVED,
        )
        if not self.priced:  # as product services answered before ReservedProduct
            return product_internal_pb2.ReserveStockResponse(reservation=reservation)
        products = [
            product_internal_pb2.ReservedProduct(
                product_id=item.product_id,
                name=CATALOGUE[item.product_id].name,
                price=CATALOGUE[item.product_id].price,
            )
            for item in request.items
        ]
        return product_internal_pb2.ReserveStockResponse(reservation=reservation, products=products)


class Catalogue(product_pb2_grpc.ProductServiceServicer):
    def __init__(self) -> None:
        self.batch_reads = 0

    async def BatchGetProducts(
        self, request: product_pb2.BatchGetProductsRequest, context: object
    ) -> product_pb2.BatchGetProductsResponse:
        self.batch_reads += 1
        return product_pb2.BatchGetProductsResponse(products=[CATALOGUE[i] for i in request.ids])


@pytest.fixture(params=[True, False], ids=["priced answer", "older product service"])
async def product_service(
    request: pytest.FixtureRequest,
) -> AsyncIterator[tuple[str, Catalogue, bool]]:
    server = grpc.aio.server()
    catalogue = Catalogue()  # type: ignore[abstract]  # only the methods called here
    product_internal_pb2_grpc.add_ProductInternalServiceServicer_to_server(
        Stock(priced=request.param),  # type: ignore[abstract]
        server,
    )
    product_pb2_grpc.add_ProductServiceServicer_to_server(catalogue, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}", catalogue, request.param
    finally:
        await server.stop(0)


async def test_an_order_is_priced_by_either_version_of_the_product_service(
    product_service: tuple[str, Catalogue, bool],
) -> None:
    address, catalogue, priced_answer = product_service
    peers = GrpcPeers(address, address, address, BreakerSettings())
    try:
        priced = await peers.reserve("res_1", {"prd_tea": 2, "prd_mug": 1})
    finally:
        await peers.close()
    assert priced == [
        PricedProduct("prd_tea", "Tea", "EUR", 450),
        PricedProduct("prd_mug", "Mug", "EUR", 1299),
    ]
    # A priced answer needs no read of its own; an older service's is read as before.
    assert catalogue.batch_reads == (0 if priced_answer else 1)


Context = grpc.aio.ServicerContext[Any, Any]
# The payments of a scripted payment service: the state each order's payment is in;
# "ord_silent"'s provider does not answer; "ord_broken"'s capture fails inside the
# payment service (INTERNAL); "ord_x" has no payment.
PAYMENTS = {
    "ord_a": "AUTHORIZED",
    "ord_v": "VOIDED",
    "ord_silent": "AUTHORIZED",
    "ord_broken": "AUTHORIZED",
    "ord_b": "AUTHORIZED",
}
ASKED = ["ord_a", "ord_v", "ord_x", "ord_silent", "ord_broken", "ord_b"]


class Payments(payment_internal_pb2_grpc.PaymentInternalServiceServicer):
    """A payment service as the contract describes it; `batches` False: one from before
    CapturePayments (which then answers UNIMPLEMENTED, as grpc does for any method a
    servicer lacks)."""

    def __init__(self, batches: bool, reversed_answer: bool = False) -> None:
        self.states = dict(PAYMENTS)
        # Answers CapturePayments with the outcomes in the reverse order (each names its
        # order: the client must go by that, not by position).
        self.reversed_answer = reversed_answer
        self.batch_calls = 0
        self.single_calls = 0
        if not batches:
            self.CapturePayments = self._unimplemented  # type: ignore[method-assign,assignment]

    def _capture(self, order_id: str) -> payment_pb2.Payment:
        if order_id not in self.states:
            raise NotFound("payment", order_id)
        if order_id == "ord_silent":
            raise Unavailable("the provider did not answer", "PAYMENT_PROVIDER_UNAVAILABLE")
        if order_id == "ord_broken":
            raise RuntimeError("a fault of the payment service")
        if self.states[order_id] not in ("AUTHORIZED", "CAPTURED"):
            raise FailedPrecondition(
                "not authorized", "PAYMENT_NOT_AUTHORIZED", [], state=self.states[order_id]
            )
        self.states[order_id] = "CAPTURED"
        return self._payment(order_id)

    def _payment(self, order_id: str) -> payment_pb2.Payment:
        return payment_pb2.Payment(
            order_id=order_id,
            state=f"PAYMENT_STATE_{self.states[order_id]}",
        )

    async def Capture(
        self, request: payment_internal_pb2.CaptureRequest, context: Context
    ) -> payment_internal_pb2.CaptureResponse:
        self.single_calls += 1
        try:
            return payment_internal_pb2.CaptureResponse(payment=self._capture(request.order_id))
        except DomainError as error:
            status = error.to_status()
            await context.abort(
                error.code, status.message, ((DETAILS_KEY, status.SerializeToString()),)
            )
            raise
        except RuntimeError:
            await context.abort(grpc.StatusCode.INTERNAL, "internal error")
            raise

    async def CapturePayments(
        self,
        request: payment_internal_pb2.CapturePaymentsRequest,
        context: Context,
    ) -> payment_internal_pb2.CapturePaymentsResponse:
        self.batch_calls += 1
        outcomes = []
        for order_id in request.order_ids:
            outcome = payment_internal_pb2.CaptureOutcome(order_id=order_id)
            try:
                outcome.payment.CopyFrom(self._capture(order_id))
            except (FailedPrecondition, Unavailable, RuntimeError):
                outcome.payment.CopyFrom(self._payment(order_id))
            except NotFound:
                pass
            outcomes.append(outcome)
        if self.reversed_answer:
            outcomes.reverse()
        return payment_internal_pb2.CapturePaymentsResponse(outcomes=outcomes)

    async def _unimplemented(self, request: object, context: Context) -> None:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "Method not implemented!")


@pytest.mark.parametrize(
    ("batches", "reversed_answer"),
    [(True, False), (True, True), (False, False)],
    ids=["CapturePayments", "CapturePayments answering out of order", "older payment service"],
)
async def test_captures_are_asked_of_either_version_of_the_payment_service(
    batches: bool, reversed_answer: bool
) -> None:
    server = grpc.aio.server()
    payments = Payments(batches, reversed_answer)  # type: ignore[abstract]  # only those called
    payment_internal_pb2_grpc.add_PaymentInternalServiceServicer_to_server(payments, server)
    address = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
    await server.start()
    peers = GrpcPeers(address, address, address, BreakerSettings())
    try:
        states = await peers.capture_all(ASKED)
    finally:
        await peers.close()
        await server.stop(0)
    # Captured; not in a state to capture; no payment; still held (the provider silent,
    # or the payment service failing on that one: the others are captured all the same).
    assert states == ["CAPTURED", "VOIDED", None, "AUTHORIZED", "AUTHORIZED", "CAPTURED"]
    assert (payments.states["ord_a"], payments.states["ord_b"]) == ("CAPTURED", "CAPTURED")
    if batches:
        assert (payments.batch_calls, payments.single_calls) == (1, 0)
    else:  # one Capture each (ord_silent's UNAVAILABLE repeated by the retry policy)
        assert payments.batch_calls == 0 and payments.single_calls >= len(ASKED)
