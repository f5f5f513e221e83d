"""Two replicas of every service as real processes on PostgreSQL and NATS; while
shoppers place orders (retrying with the same idempotency key, as a client should),
one replica of each service in turn is SIGKILLed and started again. Nothing is lost
or doubled: every order a shopper asked for is placed exactly once, stock plus what
placed orders hold equals the start, no reservation is orphaned, every placed order
has one captured payment and no other payment holds money, each order has one
notification, and live streams that lose their replica resume from their cursor with
nothing missing."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import grpc

from services.common import clients
from shop.common.v1 import money_pb2
from shop.notification.v1 import notification_pb2, notification_pb2_grpc
from shop.order.v1 import order_pb2, order_pb2_grpc
from shop.product.v1 import product_pb2, product_pb2_grpc
from shop.user.v1 import user_pb2, user_pb2_grpc
from tests import tokens
from tests.conftest import postgres_database, require
from tests.mesh import delete_stream
from tests.processes import ServiceProcess, service_process

NATS = "nats://127.0.0.1:4222"
SERVICES = ("user", "product", "payment", "order", "notification")
SHOPPERS = 6
ORDERS_PER_SHOPPER = 25
STOCK = 1000
RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


class Cluster:
    """Two processes per service; a replica can be killed and started again on its port."""

    def __init__(self, stack: AsyncExitStack, base_env: dict[str, str]) -> None:
        self._stack = stack
        self._env = base_env
        self.replicas: dict[str, list[ServiceProcess]] = defaultdict(list)
        self.database_urls: dict[str, str] = {}

    def addresses(self, name: str) -> str:
        return ",".join(replica.address for replica in self.replicas[name])

    def env_for(self, name: str) -> dict[str, str]:
        env = {**self._env, f"{name.upper()}_DATABASE_URL": self.database_urls[name]}
        for peer in SERVICES:
            if self.replicas[peer]:
                env[f"{peer.upper()}_SERVICE_ADDR"] = self.addresses(peer)
        return env

    async def start(self, name: str, port: int = 0) -> ServiceProcess:
        # Only the serving port is kept over a restart (callers know it); the metrics and
        # health ports are any free ones: PORT + 1000 / + 2000 may be taken meanwhile by
        # another connection's local port.
        env = {**self.env_for(name), "PORT": str(port), "METRICS_PORT": "0", "HEALTH_PORT": "0"}
        return await self._stack.enter_async_context(service_process(name, env))

    async def kill_and_restart(self, name: str, index: int) -> None:
        victim = self.replicas[name][index]
        victim.process.send_signal(signal.SIGKILL)
        await victim.process.wait()
        await asyncio.sleep(1.0)  # calls in flight to it fail; callers move to the other
        port = int(victim.address.rsplit(":", 1)[1])
        self.replicas[name][index] = await self.start(name, port)


@asynccontextmanager
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    namespace = f"t{uuid.uuid4().hex[:10]}"
    base_env = {
        "DATA_DIR": str(tmp_path),
        "LOG_LEVEL": "WARNING",
        "BROKER_URL": NATS,
        "EVENT_STREAM": namespace.upper(),
        "EVENT_SUBJECT_PREFIX": namespace,
        # A killed order replica's attempts are taken over by the other's sweeper soon.
        "ORDER_ATTEMPT_TIMEOUT": "3",
        "BREAKER_RESET_SECONDS": "1",
    }
    try:
        async with AsyncExitStack() as stack:
            mesh = Cluster(stack, base_env)
            for name in SERVICES:
                mesh.database_urls[name] = await stack.enter_async_context(postgres_database())
            for name in SERVICES:  # callees first: each replica knows its peers
                for _ in range(2):
                    mesh.replicas[name].append(await mesh.start(name))
            yield mesh
    finally:
        await delete_stream(NATS, namespace.upper())


async def sql(url: str, query: str) -> Any:
    dsn = url.replace("postgresql+asyncpg://", "postgresql://")
    connection = await asyncpg.connect(dsn)
    try:
        return await connection.fetch(query)
    finally:
        await connection.close()


async def place_with_retries(
    orders: order_pb2_grpc.OrderServiceAsyncStub, request: order_pb2.CreateOrderRequest
) -> tuple[str, int]:
    """Places the order, retrying with the same key until it is placed; returns its id
    and how many attempts it took."""
    deadline = time.monotonic() + 90
    attempts = 0
    while True:
        attempts += 1
        try:
            reply = await orders.CreateOrder(
                request, timeout=20, metadata=tokens.bearer(request.user_id)
            )
            return reply.order.id, attempts
        except grpc.aio.AioRpcError as error:
            if error.code() not in RETRYABLE or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def follow(
    channel: grpc.aio.Channel, user_id: str, into: list[str], resumed: list[str]
) -> None:
    """A live stream of the user's notifications that resumes from its last cursor
    whenever its replica goes away (noted in `resumed`), until cancelled."""
    stub = notification_pb2_grpc.NotificationServiceStub(channel)
    cursor = ""
    while True:
        call = stub.StreamNotifications(
            notification_pb2.StreamNotificationsRequest(user_id=user_id, cursor=cursor),
            metadata=tokens.bearer(user_id),
            wait_for_ready=True,
        )
        try:
            async for message in call:
                into.append(message.notification.order_id)
                cursor = message.cursor
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.UNAVAILABLE:
                raise
            resumed.append(user_id)
            await asyncio.sleep(0.2)
        finally:
            call.cancel()


async def test_killing_a_replica_of_each_service_loses_and_doubles_nothing(
    tmp_path: Path,
) -> None:
    require("127.0.0.1", 4222, "NATS")
    async with cluster(tmp_path) as mesh:
        admin = [("authorization", f"Bearer {tokens.ADMIN_TOKEN}")]

        def channel_to(name: str) -> grpc.aio.Channel:
            return clients.channel(
                mesh.addresses(name), peer=name, default_timeout=None, tls=tokens.CLIENT_TLS
            )

        channels = {name: channel_to(name) for name in ("user", "product", "order")}
        # Each stream is pinned to the first notification replica, the one that dies.
        first_notification = mesh.replicas["notification"][0].address
        stream_channel = clients.channel(
            first_notification, default_timeout=None, tls=tokens.CLIENT_TLS
        )
        try:
            users = [
                (
                    await user_pb2_grpc.UserServiceStub(channels["user"]).CreateUser(
                        user_pb2.CreateUserRequest(email=f"k{i}@example.com", display_name="K")
                    )
                ).user.id
                for i in range(SHOPPERS)
            ]
            product = (
                await product_pb2_grpc.ProductServiceStub(channels["product"]).CreateProduct(
                    product_pb2.CreateProductRequest(
                        name="Mug",
                        price=money_pb2.Money(currency_code="EUR", amount_minor=500),
                        stock=STOCK,
                    ),
                    metadata=admin,
                )
            ).product
            seen: dict[str, list[str]] = {user_id: [] for user_id in users}
            resumed: list[str] = []
            followers = [
                asyncio.create_task(follow(stream_channel, u, seen[u], resumed)) for u in users
            ]
            orders = order_pb2_grpc.OrderServiceStub(channels["order"])
            placed: dict[str, list[str]] = defaultdict(list)
            attempts: list[int] = []
            half_way = asyncio.Event()

            async def shopper(user_id: str) -> None:
                for i in range(ORDERS_PER_SHOPPER):
                    request = order_pb2.CreateOrderRequest(
                        user_id=user_id,
                        idempotency_key=f"{user_id}-{i}",
                        items=[order_pb2.CreateOrderItem(product_id=product.id, quantity=1)],
                    )
                    order_id, tries = await place_with_retries(orders, request)
                    placed[user_id].append(order_id)
                    attempts.append(tries)
                    if len(attempts) >= SHOPPERS * ORDERS_PER_SHOPPER // 5:
                        half_way.set()

            shoppers = [asyncio.create_task(shopper(u)) for u in users]
            waiting = asyncio.create_task(half_way.wait())
            await asyncio.wait(
                [waiting, *shoppers], return_when=asyncio.FIRST_COMPLETED, timeout=60
            )
            for task in shoppers:
                if task.done():
                    task.result()  # a shopper that gave up: its error, not a hang
            assert half_way.is_set(), f"only {len(attempts)} orders placed in 60 s"
            for name in ("product", "user", "payment", "order", "notification"):
                await mesh.kill_and_restart(name, 0)
            await asyncio.wait_for(asyncio.gather(*shoppers), 120)

            total = SHOPPERS * ORDERS_PER_SHOPPER
            every_order = [o for ids in placed.values() for o in ids]
            assert len(every_order) == total and len(set(every_order)) == total
            # The sweeper undoes attempts that died with their replica.
            urls = mesh.database_urls
            for _ in range(200):
                open_attempts = await sql(
                    urls["order"],
                    "SELECT count(*) FROM orders WHERE status IN ('PENDING','FAILED')",
                )
                if open_attempts[0][0] == 0:
                    break
                await asyncio.sleep(0.2)
            rows = await sql(urls["order"], "SELECT id, status FROM orders")
            assert sorted(r["id"] for r in rows) == sorted(every_order)
            assert {r["status"] for r in rows} == {"PLACED"}
            stock = await sql(
                urls["product"], f"SELECT stock FROM products WHERE id = '{product.id}'"
            )
            held = await sql(
                urls["product"],
                "SELECT count(*), coalesce(sum(i.quantity), 0) FROM reservations r "
                "JOIN reservation_items i ON i.reservation_id = r.id WHERE r.state = 'RESERVED'",
            )
            assert stock[0][0] + held[0][1] == STOCK, "stock + reserved == the start"
            assert held[0][0] == total, "one reservation per placed order, none orphaned"
            # Money: captures that died with a replica are the sweepers' (after a few
            # seconds); holds of attempts that died are voided.
            for _ in range(200):
                payments = await sql(urls["payment"], "SELECT order_id, state FROM payments")
                settled = await sql(
                    urls["order"],
                    "SELECT count(*) FROM orders WHERE payment_state <> 'CAPTURED'",
                )
                if settled[0][0] == 0 and all(p["state"] != "AUTHORIZED" for p in payments):
                    break
                await asyncio.sleep(0.2)
            captured = sorted(p["order_id"] for p in payments if p["state"] == "CAPTURED")
            assert captured == sorted(every_order), "one captured payment per placed order"
            assert {p["state"] for p in payments if p["state"] != "CAPTURED"} <= {
                "VOIDED",
                "FAILED",
            }
            charges = await sql(
                urls["payment"], "SELECT state, count(*) AS n FROM provider_charges GROUP BY state"
            )
            charged = {c["state"]: c["n"] for c in charges}
            assert charged.get("CAPTURED") == total and not charged.get("AUTHORIZED"), charged

            async def notified() -> list[Any]:
                return list(await sql(urls["notification"], "SELECT order_id FROM notifications"))

            for _ in range(200):
                if len(await notified()) >= total:
                    break
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.5)
            notes = [r["order_id"] for r in await notified()]
            assert sorted(notes) == sorted(every_order), "one notification per order"
            for _ in range(100):
                if all(len(seen[u]) >= len(placed[u]) for u in users):
                    break
                await asyncio.sleep(0.1)
            for task in followers:
                task.cancel()
            await asyncio.gather(*followers, return_exceptions=True)
            for user_id in users:
                assert sorted(seen[user_id]) == sorted(placed[user_id]), user_id
                assert len(seen[user_id]) == len(set(seen[user_id])), "nothing twice"
            assert set(resumed) == set(users), "every stream lost its replica and resumed"
            retried = sum(a > 1 for a in attempts)
            print(f"attempts per order: max {max(attempts)}, {retried} orders retried")
        finally:
            for channel in (*channels.values(), stream_channel):
                with contextlib.suppress(Exception):
                    await channel.close()
