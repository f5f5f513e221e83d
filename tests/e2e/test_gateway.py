"""The gateway on real HTTP (its own process, Hypercorn) in front of the four services:
every protocol, the generated clients, buf curl, errors, streams and deadlines."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import grpc
import pytest
from connectrpc.code import Code
from connectrpc.compat import google_protobuf_json_codec
from connectrpc.errors import ConnectError
from connectrpc.protocol import ProtocolType
from google.rpc import error_details_pb2

from services.common.interceptors import Context
from services.user.wiring import SPEC as USER
from shop.common.v1 import money_pb2
from shop.notification.v1 import notification_connect, notification_pb2
from shop.order.v1 import order_connect, order_pb2, order_pb2_grpc
from shop.product.v1 import product_connect, product_pb2, product_pb2_grpc
from shop.user.v1 import user_connect, user_pb2, user_pb2_grpc
from tests import tokens
from tests.conftest import user_service_serving
from tests.e2e.conftest import Stack, curl, gateway_env
from tests.mesh import running_mesh
from tests.processes import service_process
from tests.waits import eventually

ROOT = Path(__file__).resolve().parents[2]
BUF = ROOT / ".venv" / "bin" / "buf"


async def connect_json(
    stack: Stack, method: str, body: dict[str, Any]
) -> tuple[int, dict[str, Any]]:
    return await asyncio.to_thread(
        curl,
        "-X",
        "POST",
        f"{stack.url}/{method}",
        "-H",
        "content-type: application/json",
        "-d",
        json.dumps(body),
    )


def money(amount: int) -> money_pb2.Money:
    return money_pb2.Money(currency_code="EUR", amount_minor=amount)


async def test_connect_json_with_curl(stack: Stack) -> None:
    status, user = await connect_json(
        stack,
        "shop.user.v1.UserService/CreateUser",
        {"email": "curl@example.com", "displayName": "Curl"},
    )
    assert status == 200 and user["user"]["email"] == "curl@example.com"
    status, product = await connect_json(
        stack,
        "shop.product.v1.ProductService/CreateProduct",
        {"name": "Mug", "price": {"currencyCode": "EUR", "amountMinor": "1299"}, "stock": 5},
    )
    assert status == 200
    status, order = await connect_json(
        stack,
        "shop.order.v1.OrderService/CreateOrder",
        {
            "userId": user["user"]["id"],
            "idempotencyKey": "curl-1",
            "items": [{"productId": product["product"]["id"], "quantity": 2}],
        },
    )
    assert status == 200 and order["order"]["total"]["amountMinor"] == "2598"
    # Side-effect-free methods also answer Connect GET requests.
    message = json.dumps({"id": order["order"]["id"]})
    status, fetched = await asyncio.to_thread(
        curl,
        "-G",
        f"{stack.url}/shop.order.v1.OrderService/GetOrder",
        "--data-urlencode",
        "connect=v1",
        "--data-urlencode",
        "encoding=json",
        "--data-urlencode",
        f"message={message}",
    )
    assert status == 200 and fetched["order"] == order["order"]
    assert await stack.mesh.stock_of(product["product"]["id"]) == [3]


@pytest.mark.parametrize(
    ("protocol", "codec"),
    [
        (ProtocolType.CONNECT, None),
        (ProtocolType.CONNECT, google_protobuf_json_codec()),
        (ProtocolType.GRPC_WEB, None),
    ],
    ids=["connect-binary", "connect-json", "grpc-web"],
)
async def test_generated_async_client(stack: Stack, protocol: ProtocolType, codec: Any) -> None:
    options: dict[str, Any] = {"protocol": protocol, "interceptors": [tokens.ConnectBearer()]}
    if codec is not None:
        options["codec"] = codec
    async with (
        user_connect.UserServiceClient(stack.url, **options) as users,
        product_connect.ProductServiceClient(stack.url, **options) as products,
        order_connect.OrderServiceClient(stack.url, **options) as orders,
    ):
        user = (
            await users.create_user(
                user_pb2.CreateUserRequest(email=f"{uuid.uuid4().hex[:8]}@x.io", display_name="A")
            )
        ).user
        product = (
            await products.create_product(
                product_pb2.CreateProductRequest(name="Tea", price=money(450), stock=9)
            )
        ).product
        placed = (
            await orders.create_order(
                order_pb2.CreateOrderRequest(
                    user_id=user.id,
                    idempotency_key=uuid.uuid4().hex,
                    items=[order_pb2.CreateOrderItem(product_id=product.id, quantity=3)],
                )
            )
        ).order
        fetched = (await orders.get_order(order_pb2.GetOrderRequest(id=placed.id))).order
        assert fetched == placed and placed.total.amount_minor == 1350
        listed = await orders.list_orders(order_pb2.ListOrdersRequest(user_id=user.id))
        assert [o.id for o in listed.orders] == [placed.id]

        with pytest.raises(ConnectError) as caught:
            await users.create_user(user_pb2.CreateUserRequest(email="bad", display_name=""))
        assert caught.value.code == Code.INVALID_ARGUMENT
        detail = next(d for d in caught.value.details if d.type_name == "google.rpc.BadRequest")
        bad_request = error_details_pb2.BadRequest.FromString(detail.message_bytes)
        assert {v.field for v in bad_request.field_violations} == {"email", "display_name"}


async def test_generated_sync_client(stack: Stack) -> None:
    def flow() -> tuple[order_pb2.Order, order_pb2.Order]:
        bearer = [tokens.ConnectBearerSync()]
        with (
            user_connect.UserServiceClientSync(stack.url, interceptors=bearer) as users,
            product_connect.ProductServiceClientSync(stack.url, interceptors=bearer) as products,
            order_connect.OrderServiceClientSync(stack.url, interceptors=bearer) as orders,
        ):
            user = users.create_user(
                user_pb2.CreateUserRequest(email="sync@x.io", display_name="S")
            ).user
            product = products.create_product(
                product_pb2.CreateProductRequest(name="Pen", price=money(100), stock=2)
            ).product
            placed = orders.create_order(
                order_pb2.CreateOrderRequest(
                    user_id=user.id,
                    idempotency_key="sync-1",
                    items=[order_pb2.CreateOrderItem(product_id=product.id, quantity=2)],
                )
            ).order
            return placed, orders.get_order(order_pb2.GetOrderRequest(id=placed.id)).order

    placed, fetched = await asyncio.to_thread(flow)
    assert fetched == placed and placed.status == order_pb2.ORDER_STATUS_PLACED


async def test_grpcio_stub_pointed_at_the_gateway(stack: Stack) -> None:
    async with tokens.edge_channel(stack.url.removeprefix("http://")) as channel:
        users = user_pb2_grpc.UserServiceStub(channel)
        products = product_pb2_grpc.ProductServiceStub(channel)
        orders = order_pb2_grpc.OrderServiceStub(channel)
        user = (
            await users.CreateUser(user_pb2.CreateUserRequest(email="grpc@x.io", display_name="G"))
        ).user
        product = (
            await products.CreateProduct(
                product_pb2.CreateProductRequest(name="Cup", price=money(300), stock=4)
            )
        ).product
        placed = (
            await orders.CreateOrder(
                order_pb2.CreateOrderRequest(
                    user_id=user.id,
                    idempotency_key="grpc-1",
                    items=[order_pb2.CreateOrderItem(product_id=product.id, quantity=1)],
                )
            )
        ).order
        assert (await orders.GetOrder(order_pb2.GetOrderRequest(id=placed.id))).order == placed
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await users.GetUser(user_pb2.GetUserRequest(id="usr_missing"))
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("buf") / "image.binpb"
    subprocess.run(
        [str(ROOT / ".venv" / "bin" / "python"), "scripts/protogen.py", "image", str(path)],
        cwd=ROOT,
        check=True,
    )
    return path


def buf_curl(protocol: str, image: Path, url: str, body: dict[str, Any]) -> dict[str, Any]:
    protocol, _, transport = protocol.partition("-")
    flags = ["--http2-prior-knowledge"] if protocol == "grpc" or transport == "h2" else []
    result = subprocess.run(
        [
            str(BUF),
            "curl",
            "--protocol",
            protocol,
            *flags,
            "--schema",
            str(image),
            "-H",
            tokens.ADMIN_HEADER,
            "-d",
            json.dumps(body),
            url,
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


@pytest.mark.parametrize("protocol", ["connect", "connect-h2", "grpcweb", "grpcweb-h2", "grpc"])
async def test_buf_curl(stack: Stack, image: Path, protocol: str) -> None:
    created = await asyncio.to_thread(
        buf_curl,
        protocol,
        image,
        f"{stack.url}/shop.user.v1.UserService/CreateUser",
        {"email": f"{protocol.replace('-', '')}@buf.io", "displayName": protocol},
    )
    user_id = created["user"]["id"]
    fetched = await asyncio.to_thread(
        buf_curl, protocol, image, f"{stack.url}/shop.user.v1.UserService/GetUser", {"id": user_id}
    )
    assert fetched["user"]["email"] == f"{protocol.replace('-', '')}@buf.io"


async def test_live_notifications_on_a_connect_stream(stack: Stack) -> None:
    user, product = await stack.mesh.user(), await stack.mesh.product(stock=5)
    async with notification_connect.NotificationServiceClient(
        stack.url, interceptors=[tokens.ConnectBearer()]
    ) as client:
        stream = client.stream_notifications(
            notification_pb2.StreamNotificationsRequest(user_id=user.id)
        )
        first = asyncio.ensure_future(anext(aiter(stream)))
        hub = stack.mesh.services["notification"].parts.hub
        await eventually(lambda: hub.open_streams == 1, "the stream is open before the order")
        placed = (
            await stack.mesh.orders.CreateOrder(stack.mesh.order_request(user.id, {product.id: 1}))
        ).order
        received = await asyncio.wait_for(first, 5)
        assert received.notification.order_id == placed.id
        first.cancel()


async def test_a_stream_that_asks_for_heartbeats_hears_one_at_once(stack: Stack) -> None:
    """Without a first message a Connect client cannot tell an open, quiet stream from
    one still connecting (the headers come with the first message): with `heartbeats`,
    the first message comes at once, then the notifications as usual."""
    user, product = await stack.mesh.user(), await stack.mesh.product(stock=5)
    async with notification_connect.NotificationServiceClient(
        stack.url, interceptors=[tokens.ConnectBearer()]
    ) as client:
        stream = aiter(
            client.stream_notifications(
                notification_pb2.StreamNotificationsRequest(user_id=user.id, heartbeats=True)
            )
        )
        hello = await asyncio.wait_for(anext(stream), 5)
        assert hello.heartbeat and not hello.HasField("notification") and not hello.cursor
        placed = (
            await stack.mesh.orders.CreateOrder(stack.mesh.order_request(user.id, {product.id: 1}))
        ).order
        received = await asyncio.wait_for(anext(stream), 5)
        assert not received.heartbeat and received.notification.order_id == placed.id
        assert received.cursor
        await stream.aclose()  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b'{"email": "x@y.io", "displayName": "X", "bogus": 1}', "application/json"),
        (b'{"email": ', "application/json"),
        (b'{"email": 5, "displayName": "X"}', "application/json"),
        (b"\xff\xfe garbage", "application/proto"),
    ],
    ids=["unknown_field", "malformed_json", "wrong_type", "malformed_proto"],
)
async def test_bad_bodies_are_400_invalid_argument_and_write_nothing(
    stack: Stack, body: bytes, content_type: str
) -> None:
    path = stack.mesh.data_dir / "body.bin"
    path.write_bytes(body)
    status, error = await asyncio.to_thread(
        curl,
        "-X",
        "POST",
        f"{stack.url}/shop.user.v1.UserService/CreateUser",
        "-H",
        f"content-type: {content_type}",
        "--data-binary",
        f"@{path}",
    )
    assert (status, error["code"]) == (400, "invalid_argument")
    listed = await stack.mesh.users.ListUsers(user_pb2.ListUsersRequest())
    assert list(listed.users) == []


async def test_internal_services_are_not_exposed(stack: Stack) -> None:
    for method in (
        "shop.product.v1.ProductInternalService/ReserveStock",
        "shop.user.v1.UserInternalService/ValidateUser",
        "shop.order.v1.OrderInternalService/StreamOrderEvents",
    ):
        status, _ = await connect_json(stack, method, {})
        assert status == 404, method


class SlowUsers(user_pb2_grpc.UserServiceServicer):
    """A user service whose GetUser takes 10 s, and which notes what it was sent."""

    CreateUser = ListUsers = UpdateUser = None  # type: ignore[assignment]

    def __init__(self) -> None:
        self.cancelled = asyncio.Event()
        self.metadata: dict[str, str] = {}
        self.time_remaining: float | None = None

    async def GetUser(
        self, request: user_pb2.GetUserRequest, context: Context
    ) -> user_pb2.GetUserResponse:
        self.metadata = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
        self.time_remaining = context.time_remaining()
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return user_pb2.GetUserResponse()


async def test_deadline_and_headers_reach_the_service_and_expiry_cancels_it(tmp_path: Path) -> None:
    slow = SlowUsers()

    async with running_mesh(tmp_path) as mesh:
        await mesh.stop("user")
        await mesh.start("user", user_service_serving(USER, slow))
        async with service_process("gateway", gateway_env(mesh), module="gateway") as gateway:
            started = time.monotonic()
            status, error = await asyncio.to_thread(
                curl,
                "-X",
                "POST",
                f"http://{gateway.address}/shop.user.v1.UserService/GetUser",
                "-H",
                "content-type: application/json",
                "-H",
                "connect-timeout-ms: 50",
                "-H",
                "x-request-id: req-123",
                "-H",
                "traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                "-H",
                "x-tenant: acme",
                "-H",
                "x-secret: not-forwarded",
                "-d",
                '{"id": "usr_1"}',
            )
            elapsed = time.monotonic() - started
            assert (status, error["code"]) == (504, "deadline_exceeded"), error
            assert elapsed < 1.0, f"took {elapsed:.2f} s"
            await asyncio.wait_for(slow.cancelled.wait(), 2)
            assert slow.time_remaining is not None and slow.time_remaining <= 0.05
            assert slow.metadata["x-request-id"] == "req-123"
            assert slow.metadata["traceparent"].startswith("00-0af7651916cd43dd8448eb211c80319c-")
            assert slow.metadata["x-tenant"] == "acme"
            assert "x-secret" not in slow.metadata

            # The same over gRPC: the grpc-timeout header bounds the forwarded call.
            slow.cancelled.clear()
            async with tokens.edge_channel(gateway.address) as channel:
                started = time.monotonic()
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await user_pb2_grpc.UserServiceStub(channel).GetUser(
                        user_pb2.GetUserRequest(id="usr_1"), timeout=0.05
                    )
                assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
                assert time.monotonic() - started < 1.0
            await asyncio.wait_for(slow.cancelled.wait(), 2)


@pytest.mark.parametrize("client", ["connect", "sse"])
async def test_a_client_going_away_cancels_the_internal_stream(stack: Stack, client: str) -> None:
    from services.notification.hub import Hub

    hub = stack.mesh.services["notification"].parts.hub
    assert isinstance(hub, Hub)
    user = await stack.mesh.user()
    if client == "connect":
        body = json.dumps({"userId": user.id}).encode()
        envelope = stack.mesh.data_dir / "envelope.bin"
        envelope.write_bytes(b"\x00" + len(body).to_bytes(4, "big") + body)
        command = [
            "curl",
            "-s",
            "-N",
            "-X",
            "POST",
            f"{stack.url}/shop.notification.v1.NotificationService/StreamNotifications",
            "-H",
            "content-type: application/connect+json",
            "-H",
            tokens.ADMIN_HEADER,
            "--data-binary",
            f"@{envelope}",
        ]
    else:
        url = f"{stack.url}/v1/users/{user.id}/notifications:stream"
        command = ["curl", "-s", "-N", "-H", tokens.ADMIN_HEADER, url]
    process = await asyncio.create_subprocess_exec(*command, stdout=asyncio.subprocess.DEVNULL)
    try:
        await eventually(lambda: hub.open_streams == 1, "the stream is open")
    finally:
        process.kill()
        await process.wait()
    await eventually(lambda: hub.open_streams == 0, "the stream is closed")
