"""Calls that survive a lost replica, fail fast while a peer is down, and retry safely."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import grpc
import pytest

from services.product.handlers import ProductInternalServicer
from shop.order.v1 import order_pb2
from shop.product.v1 import product_pb2, product_pb2_grpc
from tests import tokens
from tests.mesh import Mesh, product_request, running_mesh
from tests.processes import service_process
from tests.rpc import fails, reason_of

UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


async def test_orders_go_on_when_one_of_two_product_replicas_is_killed(tmp_path: Path) -> None:
    env = {"DATA_DIR": str(tmp_path), "LOG_LEVEL": "WARNING"}
    async with (
        service_process("product", env) as doomed,
        service_process("product", env) as survivor,
    ):
        mesh = Mesh(tmp_path, peer_addresses={"product": f"{doomed.address},{survivor.address}"})
        survivor_channel = tokens.admin_channel(survivor.address)
        products = product_pb2_grpc.ProductServiceStub(survivor_channel)
        try:
            for name in ("user", "payment", "order", "notification"):
                await mesh.start(name)
            user = await mesh.user()
            product = (await products.CreateProduct(product_request(1000, price=500))).product
            placed: list[float] = []
            failed: list[Any] = []
            a_quarter_done = asyncio.Event()

            async def shopper() -> None:
                for _ in range(12):
                    started = time.perf_counter()
                    try:
                        await mesh.orders.CreateOrder(
                            mesh.order_request(user.id, {product.id: 1}), timeout=3.0
                        )
                    except grpc.aio.AioRpcError as error:
                        failed.append(error.code())
                    placed.append(time.perf_counter() - started)
                    if len(placed) >= 12:
                        a_quarter_done.set()

            shoppers = [asyncio.create_task(shopper()) for _ in range(4)]
            await a_quarter_done.wait()
            doomed.process.kill()  # mid-stream, with calls in flight
            await asyncio.gather(*shoppers)

            assert doomed.process.returncode is not None or await doomed.process.wait() != 0
            assert failed == []
            assert len(placed) == 48
            assert max(placed) < 3.0  # none hung to its deadline
            reply = await products.GetProduct(product_pb2.GetProductRequest(id=product.id))
            assert reply.product.stock == 1000 - 48
        finally:
            await mesh.close()
            await survivor_channel.close()


class FrozenClock:
    """Stands in for the `time` module of the breaker library: time moves only when
    the test says, so the circuit can't half-open in the middle of the test."""

    def __init__(self) -> None:
        self.now = time.time()

    def time(self) -> float:
        return self.now


async def test_breaker_fails_fast_while_the_product_service_is_down_then_recovers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the circuit is open, orders are refused by the breaker itself (reason
    PRODUCT_CIRCUIT_OPEN: the product service is not even tried); once the reset window
    has passed and the product service is back, orders succeed without a restart."""
    import purgatory.domain.model

    clock = FrozenClock()
    monkeypatch.setattr(purgatory.domain.model, "time", clock)
    monkeypatch.setenv("BREAKER_THRESHOLD", "3")
    monkeypatch.setenv("BREAKER_RESET_SECONDS", "1")
    async with running_mesh(tmp_path) as mesh:
        user = await mesh.user()
        product = await mesh.product(stock=10)
        await mesh.stop("product")

        # Each attempt tries the peer (with gRPC's retries) and fails, and so does its
        # undoing's release: the first attempt makes two failures, the second the third
        # (unless the sweeper's retry of that release made it first): the circuit opens.
        reasons = []
        for _ in range(2):
            error = await fails(
                mesh.orders.CreateOrder(mesh.order_request(user.id, {product.id: 1})), UNAVAILABLE
            )
            reasons.append(reason_of(error))
        assert reasons[0] == "PRODUCT_UNAVAILABLE"
        assert reasons[1] in {"PRODUCT_UNAVAILABLE", "PRODUCT_CIRCUIT_OPEN"}
        for _ in range(5):  # the circuit is open: the peer is not called at all
            error = await fails(
                mesh.orders.CreateOrder(mesh.order_request(user.id, {product.id: 1})), UNAVAILABLE
            )
            assert reason_of(error) == "PRODUCT_CIRCUIT_OPEN"

        await mesh.start("product")  # back on its port; the order service is not restarted
        error = await fails(
            mesh.orders.CreateOrder(mesh.order_request(user.id, {product.id: 1})), UNAVAILABLE
        )
        assert reason_of(error) == "PRODUCT_CIRCUIT_OPEN", "still open until the window passes"
        # Each pass lets the reset window pass, so the next call is a probe; a probe can
        # still fail while the order service's channel reconnects (backoff <= 2 s).
        meanwhile: list[grpc.StatusCode] = []
        for _ in range(50):
            clock.now += 1.5
            try:
                await mesh.orders.CreateOrder(mesh.order_request(user.id, {product.id: 1}))
                break
            except grpc.aio.AioRpcError as error:
                meanwhile.append(error.code())
                await asyncio.sleep(0.2)
        assert set(meanwhile) <= {UNAVAILABLE}
        assert await mesh.stock_of(product.id) == [9], "orders did not succeed again"


async def test_a_retried_reservation_is_applied_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The product service applies the first ReserveStock but its reply is lost
    (UNAVAILABLE): gRPC retries it with the same reservation id, which applies nothing
    twice."""
    attempts: list[str] = []
    original = ProductInternalServicer.ReserveStock

    async def reply_lost_once(self: Any, request: Any, context: Any) -> Any:
        reply = await original(self, request, context)
        attempts.append(request.reservation_id)
        if len(attempts) == 1:
            await context.abort(UNAVAILABLE, "reply lost")
        return reply

    monkeypatch.setattr(ProductInternalServicer, "ReserveStock", reply_lost_once)
    async with running_mesh(tmp_path) as mesh:
        user = await mesh.user()
        product = await mesh.product(stock=10)
        reply = await mesh.orders.CreateOrder(mesh.order_request(user.id, {product.id: 3}))

        assert reply.order.status == order_pb2.ORDER_STATUS_PLACED
        assert attempts == [f"res_{reply.order.id}"] * 2
        assert await mesh.stock_of(product.id) == [7]
        assert await mesh.sql("product", "SELECT count(*) FROM reservations") == 1
