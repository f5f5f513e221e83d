"""The order saga across payment, on the real services (SQLite and PostgreSQL): an order
is placed only with its money held, the money is taken once, a decline or a lost answer
leaves nothing behind, and a cancel gives the money back once. The checks read the
payment service's own database (payments, and the simulated provider's charges)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2

from services.payment.handlers import PaymentInternalServicer
from shop.order.v1 import order_pb2
from shop.payment.v1 import payment_pb2
from tests.mesh import Mesh, running_mesh
from tests.rpc import detail, fails, reason_of
from tests.waits import eventually

FAILED_PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def mesh(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Mesh]:
    async with running_mesh(tmp_path, database=request.param) as running:
        yield running


async def payments_of(mesh: Mesh, *order_ids: str) -> list[Any]:
    """The payments (order_id, state, amount_minor, refund_request_id), of `order_ids`
    only when given."""
    where = ""
    if order_ids:
        where = " WHERE order_id IN (" + ",".join(f"'{o}'" for o in order_ids) + ")"
    return await mesh.rows(
        "payment",
        "SELECT order_id, state, amount_minor, refund_request_id FROM payments" + where,
    )


async def charges_of(mesh: Mesh, *order_ids: str) -> list[Any]:
    """The simulated provider's charges (idempotency_key is the order id, state)."""
    where = ""
    if order_ids:
        where = " WHERE idempotency_key IN (" + ",".join(f"'{o}'" for o in order_ids) + ")"
    return await mesh.rows(
        "payment", "SELECT idempotency_key, state, amount_minor FROM provider_charges" + where
    )


async def place_with_retries(
    mesh: Mesh, request: order_pb2.CreateOrderRequest, within: float = 30.0
) -> tuple[order_pb2.Order, int]:
    """Places the order, retrying with the same key on UNAVAILABLE as a client should;
    the order and how many calls it took."""
    deadline = time.monotonic() + within
    calls = 0
    while True:
        calls += 1
        try:
            return (await mesh.orders.CreateOrder(request, timeout=20)).order, calls
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


@pytest.mark.parametrize(
    ("method", "decline_code"),
    [("card_decline", "card_declined"), ("card_insufficient_funds", "insufficient_funds")],
)
async def test_a_declined_payment_places_nothing_and_takes_nothing(
    mesh: Mesh, method: str, decline_code: str
) -> None:
    user = await mesh.user()
    mug = await mesh.product(stock=10, price=400)
    request = mesh.order_request(user.id, {mug.id: 3}, key="declined-once", payment_method=method)

    error = await fails(mesh.orders.CreateOrder(request), FAILED_PRECONDITION)

    # The payment service's own error, passed through with its details.
    assert reason_of(error) == "PAYMENT_DECLINED"
    info = detail(error, error_details_pb2.ErrorInfo)
    assert info.metadata["decline_code"] == decline_code
    [payment] = await payments_of(mesh)
    assert info.metadata["order_id"] == payment.order_id
    failure = detail(error, error_details_pb2.PreconditionFailure)
    assert failure is not None and failure.violations[0].subject.startswith("payment:pay_")
    # Nothing placed, nothing held, nothing taken; the reservation was released.
    assert await mesh.stock_of(mug.id) == [10]
    assert await mesh.sql("order", "SELECT count(*) FROM orders") == 0
    # Only the attempt's PaymentFailed event (tests/e2e/test_payment_notifications.py).
    assert [row.subject for row in await mesh.rows("order", "SELECT subject FROM outbox")] == [
        "payment.failed"
    ]
    assert payment.state == "DECLINED"
    assert [c.state for c in await charges_of(mesh)] == ["DECLINED"]
    assert (
        await mesh.sql("product", "SELECT count(*) FROM reservations WHERE state = 'RESERVED'") == 0
    )

    # The key is free again: the same key with a card that pays places the order.
    request.payment_method = "card_approve"
    placed = (await mesh.orders.CreateOrder(request)).order
    assert placed.status == order_pb2.ORDER_STATUS_PLACED
    assert await mesh.stock_of(mug.id) == [7]
    [taken] = await payments_of(mesh, placed.id)
    assert (taken.state, taken.amount_minor) == ("CAPTURED", 1200)


@pytest.mark.parametrize("method", ["card_timeout", "card_error_after_charge"])
async def test_a_lost_provider_answer_never_charges_twice(mesh: Mesh, method: str) -> None:
    """The provider charges, then its answer is lost (UNAVAILABLE). Authorize is repeated
    under the same order id (gRPC's retry policy; the client's retry with the same key if
    the attempt fails anyway), and the payment service finds the charge: the order is
    paid exactly once, and any hold of an attempt that failed is voided."""
    user = await mesh.user()
    mug = await mesh.product(stock=10, price=250)
    request = mesh.order_request(user.id, {mug.id: 2}, payment_method=method)

    placed, calls = await place_with_retries(mesh, request)

    assert placed.status == order_pb2.ORDER_STATUS_PLACED
    assert calls == 1, "gRPC's retry of Authorize found the charge within the attempt"
    payments = await payments_of(mesh)
    [taken] = [p for p in payments if p.state == "CAPTURED"]
    assert (taken.order_id, taken.amount_minor) == (placed.id, 500)
    assert {p.state for p in payments if p is not taken} <= {"VOIDED"}
    charges = await charges_of(mesh)
    assert [c.idempotency_key for c in charges if c.state == "CAPTURED"] == [placed.id]
    assert {c.state for c in charges} <= {"CAPTURED", "VOIDED"}, "no hold is left"
    assert Counter(c.idempotency_key for c in charges)[placed.id] == 1, "one charge per order"
    assert await mesh.stock_of(mug.id) == [8]
    again = (await mesh.orders.CreateOrder(request)).order
    assert again.id == placed.id and len(await charges_of(mesh)) == len(charges)


@pytest.mark.parametrize(
    "database", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
async def test_an_attempt_whose_every_authorize_answer_is_lost_is_voided(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, database: str
) -> None:
    """Every answer of the first attempt's Authorize calls is lost (the payment service
    authorizes, then the reply never arrives), so the attempt fails UNAVAILABLE: its hold
    is voided and its stock released. The client's retry with the same key is a new
    attempt that pays: one charge taken, the first one voided."""
    lost: list[str] = []
    original = PaymentInternalServicer.Authorize

    async def answers_lost(self: Any, request: Any, context: Any) -> Any:
        reply = await original(self, request, context)
        if not lost or lost[0] == request.order_id:
            lost.append(request.order_id)
            await context.abort(grpc.StatusCode.UNAVAILABLE, "reply lost")
        return reply

    monkeypatch.setattr(PaymentInternalServicer, "Authorize", answers_lost)
    async with running_mesh(tmp_path, database=database) as mesh:
        user = await mesh.user()
        mug = await mesh.product(stock=10, price=250)
        request = mesh.order_request(user.id, {mug.id: 2})

        error = await fails(mesh.orders.CreateOrder(request), grpc.StatusCode.UNAVAILABLE)
        assert reason_of(error) == "PAYMENT_UNAVAILABLE"
        assert len(lost) == 3, "Authorize was tried as often as the retry policy allows"
        [voided] = await payments_of(mesh)
        assert (voided.order_id, voided.state) == (lost[0], "VOIDED")
        assert await mesh.stock_of(mug.id) == [10]
        assert await mesh.sql("order", "SELECT count(*) FROM orders") == 0

        placed, _ = await place_with_retries(mesh, request)
        payments = {p.order_id: p.state for p in await payments_of(mesh)}
        assert payments == {lost[0]: "VOIDED", placed.id: "CAPTURED"}
        charges = {c.idempotency_key: c.state for c in await charges_of(mesh)}
        assert charges == payments, "one charge per attempt, only the placed one's taken"
        assert await mesh.stock_of(mug.id) == [8]


async def test_a_provider_that_fails_before_charging_places_nothing(mesh: Mesh) -> None:
    user = await mesh.user()
    mug = await mesh.product(stock=10)
    request = mesh.order_request(user.id, {mug.id: 1}, payment_method="card_error")

    await fails(mesh.orders.CreateOrder(request), grpc.StatusCode.UNAVAILABLE)

    # Undone by the attempt itself: stock back, key free, nothing charged.
    assert await mesh.stock_of(mug.id) == [10]
    assert await mesh.sql("order", "SELECT count(*) FROM orders") == 0
    assert await charges_of(mesh) == []
    assert {p.state for p in await payments_of(mesh)} == {"FAILED"}


async def test_concurrent_orders_with_declines_reconcile_exactly(mesh: Mesh) -> None:
    """100 orders, 16 at a time, every fifth on a card that is declined: the money taken
    is exactly what the placed orders cost, one captured payment per placed order, and
    stock plus what placed orders hold is what there was."""
    users = [await mesh.user() for _ in range(5)]
    start = {
        p.id: 1000 for p in [await mesh.product(stock=1000, price=100 + 37 * i) for i in range(3)]
    }
    products = list(start)
    gate = asyncio.Semaphore(16)
    outcomes: dict[int, Any] = {}

    async def place(i: int) -> None:
        items = {products[i % 3]: 1 + i % 4, products[(i + 1) % 3]: 1 + i % 2}
        method = "card_decline" if i % 5 == 4 else "card_approve"
        request = mesh.order_request(users[i % 5].id, items, payment_method=method)
        async with gate:
            try:
                outcomes[i] = (await mesh.orders.CreateOrder(request, timeout=30)).order
            except grpc.aio.AioRpcError as error:
                outcomes[i] = error

    await asyncio.gather(*(place(i) for i in range(100)))

    declined = {i: o for i, o in outcomes.items() if isinstance(o, grpc.aio.AioRpcError)}
    placed = {i: o for i, o in outcomes.items() if isinstance(o, order_pb2.Order)}
    assert sorted(declined) == [i for i in range(100) if i % 5 == 4]
    assert {(e.code(), reason_of(e)) for e in declined.values()} == {
        (FAILED_PRECONDITION, "PAYMENT_DECLINED")
    }
    assert len(placed) == 80

    async def captures_done() -> bool:
        uncaptured = "SELECT count(*) FROM orders WHERE payment_state <> 'CAPTURED'"
        return bool(await mesh.sql("order", uncaptured) == 0)

    await eventually(captures_done, "every placed order's payment captured", within=15)
    stored = await mesh.rows("order", "SELECT id, status, total_amount_minor FROM orders")
    assert {row.status for row in stored} == {"PLACED"}
    assert sorted(row.id for row in stored) == sorted(o.id for o in placed.values())
    payments = await payments_of(mesh)
    captured = [p for p in payments if p.state == "CAPTURED"]
    assert sorted(p.order_id for p in captured) == sorted(row.id for row in stored)
    assert sum(p.amount_minor for p in captured) == sum(row.total_amount_minor for row in stored)
    assert sum(p.amount_minor for p in captured) == sum(
        o.total.amount_minor for o in placed.values()
    )
    assert Counter(p.state for p in payments) == {"CAPTURED": 80, "DECLINED": 20}
    charges = await charges_of(mesh)
    assert Counter(c.state for c in charges) == {"CAPTURED": 80, "DECLINED": 20}
    reserved = await mesh.rows(
        "product",
        "SELECT i.product_id, sum(i.quantity) AS quantity FROM reservation_items i"
        " JOIN reservations r ON r.id = i.reservation_id WHERE r.state = 'RESERVED'"
        " GROUP BY i.product_id",
    )
    held = {row.product_id: row.quantity for row in reserved}
    stock = dict(zip(products, await mesh.stock_of(*products), strict=True))
    assert {p: stock[p] + held.get(p, 0) for p in products} == start
    ordered: Counter[str] = Counter()
    for order in placed.values():
        for item in order.items:
            ordered[item.product_id] += item.quantity
    assert held == dict(ordered)


async def test_cancelling_twice_refunds_once_and_gives_the_stock_back(mesh: Mesh) -> None:
    user = await mesh.user()
    mug = await mesh.product(stock=10, price=999)
    placed = (await mesh.orders.CreateOrder(mesh.order_request(user.id, {mug.id: 2}))).order

    cancel = order_pb2.CancelOrderRequest(id=placed.id, reason="changed my mind")
    first = (await mesh.orders.CancelOrder(cancel)).order
    second = (await mesh.orders.CancelOrder(cancel)).order

    assert first.status == second.status == order_pb2.ORDER_STATUS_CANCELLED
    assert await mesh.stock_of(mug.id) == [10]
    # Read as the owner sees it, through the payment service's public API.
    reply = await mesh.payments.ListPayments(
        payment_pb2.ListPaymentsRequest(user_id=user.id, order_id=placed.id)
    )
    [payment] = reply.payments
    assert payment.state == payment_pb2.PAYMENT_STATE_REFUNDED
    assert (payment.amount.amount_minor, payment.refund_reason) == (1998, "changed my mind")
    assert payment.refund_request_id == f"cancel-{placed.id}"
    [charge] = await charges_of(mesh, placed.id)
    assert charge.state == "REFUNDED"
    assert await mesh.sql(
        "order", f"SELECT payment_state FROM orders WHERE id = '{placed.id}'"
    ) == ("REFUNDED")
