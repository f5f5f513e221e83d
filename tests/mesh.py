"""The whole mesh in the test process: the five services as real gRPC servers on
127.0.0.1, each with its own SQLite file (or PostgreSQL database), events over the
embedded feed or NATS."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import grpc
import nats
import nats.js.errors
from sqlalchemy import text

from services.common.config import ServiceConfig
from services.common.server import RunningService, ServiceSpec, start
from services.notification.wiring import SPEC as NOTIFICATION
from services.order.wiring import SPEC as ORDER
from services.payment.wiring import SPEC as PAYMENT
from services.product.wiring import SPEC as PRODUCT
from services.user.wiring import SPEC as USER
from shop.common.v1 import money_pb2
from shop.notification.v1 import notification_pb2_grpc
from shop.order.v1 import order_pb2, order_pb2_grpc
from shop.payment.v1 import payment_internal_pb2_grpc, payment_pb2_grpc
from shop.product.v1 import product_internal_pb2_grpc, product_pb2, product_pb2_grpc
from shop.user.v1 import user_pb2, user_pb2_grpc
from tests import tokens
from tests.conftest import postgres_database
from tests.waits import eventually

SPECS = {
    "user": USER,
    "product": PRODUCT,
    "order": ORDER,
    "notification": NOTIFICATION,
    "payment": PAYMENT,
}
# What running_mesh starts unless told otherwise, in start order (callees first: the
# order service calls user, product and payment).
MESH = ("user", "product", "payment", "order", "notification")


@dataclass
class Mesh:
    data_dir: Path
    broker_url: str = ""
    event_namespace: str = ""
    # Service name -> database URL; SQLite files in data_dir for the rest.
    database_urls: dict[str, str] = field(default_factory=dict)
    services: dict[str, RunningService[Any]] = field(default_factory=dict)
    channels: dict[str, grpc.aio.Channel] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    # Peer name -> address list used instead of the in-process service (replicas run apart).
    peer_addresses: dict[str, str] = field(default_factory=dict)

    def config(self, name: str) -> ServiceConfig:
        base = ServiceConfig.from_env(name, 0)
        peers = {peer: f"127.0.0.1:{port}" for peer, port in self.ports.items()}
        peers.update(self.peer_addresses)
        return replace(
            base,
            host="127.0.0.1",
            port=self.ports.get(name, 0),
            data_dir=self.data_dir,
            database_url=self.database_urls.get(
                name, f"sqlite+aiosqlite:///{self.data_dir / (name + '.db')}"
            ),
            health_interval=0.5,
            shutdown_grace=0.5,
            broker_url=self.broker_url,
            event_stream=self.event_namespace.upper() or base.event_stream,
            event_subject_prefix=self.event_namespace or base.event_subject_prefix,
            peers=peers,
            auth=tokens.SETTINGS,
            tls=tokens.service_tls(name),
        )

    async def start(self, name: str, spec: ServiceSpec | None = None) -> RunningService[Any]:
        """Starts (or restarts, on its previous port) one service."""
        service = await start(spec or SPECS[name], self.config(name))
        self.services[name] = service
        self.ports[name] = service.port
        if name not in self.channels:
            self.channels[name] = tokens.admin_channel(f"127.0.0.1:{service.port}")
        return service

    async def stop(self, name: str) -> None:
        service = self.services.pop(name, None)
        if service is not None:
            await service.stop(grace=0.2)

    async def close(self) -> None:
        for name in ("notification", "order", "payment", "product", "user"):
            await self.stop(name)
        for channel in self.channels.values():
            await channel.close()

    # Stubs, one per service, over channels that outlive restarts.
    @property
    def users(self) -> user_pb2_grpc.UserServiceAsyncStub:
        return user_pb2_grpc.UserServiceStub(self.channels["user"])

    @property
    def products(self) -> product_pb2_grpc.ProductServiceAsyncStub:
        return product_pb2_grpc.ProductServiceStub(self.channels["product"])

    @property
    def stock(self) -> product_internal_pb2_grpc.ProductInternalServiceAsyncStub:
        return product_internal_pb2_grpc.ProductInternalServiceStub(self.channels["product"])

    @property
    def orders(self) -> order_pb2_grpc.OrderServiceAsyncStub:
        return order_pb2_grpc.OrderServiceStub(self.channels["order"])

    @property
    def notifications(self) -> notification_pb2_grpc.NotificationServiceAsyncStub:
        return notification_pb2_grpc.NotificationServiceStub(self.channels["notification"])

    @property
    def payments(self) -> payment_pb2_grpc.PaymentServiceAsyncStub:
        return payment_pb2_grpc.PaymentServiceStub(self.channels["payment"])

    @property
    def payment_internal(self) -> payment_internal_pb2_grpc.PaymentInternalServiceAsyncStub:
        return payment_internal_pb2_grpc.PaymentInternalServiceStub(self.channels["payment"])

    # Shortcuts for the tests.
    async def user(self, email: str | None = None) -> user_pb2.User:
        email = email or f"{uuid.uuid4().hex[:10]}@example.com"
        reply = await self.users.CreateUser(
            user_pb2.CreateUserRequest(email=email, display_name="T")
        )
        return reply.user

    async def product(
        self, stock: int, price: int = 250, currency: str = "EUR"
    ) -> product_pb2.Product:
        reply = await self.products.CreateProduct(product_request(stock, price, currency))
        return reply.product

    async def stock_of(self, *product_ids: str) -> list[int]:
        reply = await self.products.BatchGetProducts(
            product_pb2.BatchGetProductsRequest(ids=list(product_ids))
        )
        return [p.stock for p in reply.products]

    def order_request(
        self, user_id: str, items: dict[str, int], key: str | None = None, payment_method: str = ""
    ) -> order_pb2.CreateOrderRequest:
        return order_pb2.CreateOrderRequest(
            user_id=user_id,
            idempotency_key=uuid.uuid4().hex if key is None else key,
            items=[order_pb2.CreateOrderItem(product_id=p, quantity=q) for p, q in items.items()],
            payment_method=payment_method,
        )

    async def sql(self, service: str, statement: str) -> Any:
        """Runs SQL on a service's own database (for the tests' checks and faults)."""
        async with self.services[service].platform.db.engine.begin() as connection:
            result = await connection.execute(text(statement))
            return result.scalar() if result.returns_rows else None

    async def user_status(self, user_id: str) -> bool | None:
        """Whether the order service's replica holds the user active; None: not known."""
        statement = text("SELECT active FROM user_statuses WHERE user_id = :user_id")
        async with self.services["order"].platform.db.engine.begin() as connection:
            active = (await connection.execute(statement, {"user_id": user_id})).scalar()
        return None if active is None else bool(active)

    async def replica_holds(self, user_id: str, active: bool) -> float:
        """Waits until the order service's replica holds the user as `active`; the
        seconds it took."""

        async def holds() -> bool:
            return await self.user_status(user_id) is active

        return await eventually(holds, f"the user's status ({active}) in the order service")

    def validations(self) -> float:
        """How many ValidateUser calls the user service has answered."""
        registry = self.services["user"].platform.metrics.registry
        return sum(
            sample.value
            for metric in registry.collect()
            if metric.name == "rpc_server_requests"
            for sample in metric.samples
            if sample.name.endswith("_total") and sample.labels["method"].endswith("/ValidateUser")
        )

    async def rows(self, service: str, statement: str) -> list[Any]:
        """Every row a query on a service's own database returns (named tuples)."""
        async with self.services[service].platform.db.engine.begin() as connection:
            return list((await connection.execute(text(statement))).all())


def product_request(
    stock: int, price: int = 250, currency: str = "EUR"
) -> product_pb2.CreateProductRequest:
    """A new product of a name of its own (for any product service's CreateProduct)."""
    return product_pb2.CreateProductRequest(
        name=f"P-{uuid.uuid4().hex[:6]}",
        price=money_pb2.Money(currency_code=currency, amount_minor=price),
        stock=stock,
    )


@asynccontextmanager
async def running_mesh(
    data_dir: Path,
    broker_url: str = "",
    *,
    database: str = "sqlite",
    keep_stream: bool = False,
    services: tuple[str, ...] = MESH,
) -> AsyncIterator[Mesh]:
    """The five services (`services` names others, in start order);
    `database="postgres"` gives each a fresh PostgreSQL database.
    The event stream on `broker_url` is deleted afterwards, unless `keep_stream` (a
    broker of the test's own, gone with it: a list of nodes is no URL to connect to)."""
    namespace = f"t{uuid.uuid4().hex[:10]}" if broker_url else ""
    async with contextlib.AsyncExitStack() as stack:
        mesh = Mesh(data_dir, broker_url, namespace)
        if database == "postgres":
            for name in services:
                mesh.database_urls[name] = await stack.enter_async_context(postgres_database())
        try:
            for name in services:
                await mesh.start(name)
            yield mesh
        finally:
            await mesh.close()
            if broker_url and not keep_stream:
                await delete_stream(broker_url, namespace.upper())


async def delete_stream(url: str, stream: str) -> None:
    """Leaves the shared NATS server as the test found it."""
    client = await nats.connect(url, connect_timeout=2, max_reconnect_attempts=0)
    try:
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await client.jetstream().delete_stream(stream)
    finally:
        await client.close()
