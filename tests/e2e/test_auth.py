"""Authentication at the gateway and ownership in the services: bad tokens are 401,
other people's data is 403, on every protocol, and nothing changes."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
from connectrpc.code import Code
from connectrpc.errors import ConnectError
from connectrpc.protocol import ProtocolType

from services.common.auth import ensure_dev_keys, mint
from shop.notification.v1 import notification_connect, notification_pb2, notification_pb2_grpc
from shop.order.v1 import order_pb2, order_pb2_grpc
from shop.user.v1 import user_pb2, user_pb2_grpc
from tests import tokens
from tests.e2e.conftest import Stack, curl
from tests.processes import service_process
from tests.rpc import fails

JSON = "content-type: application/json"


async def connect(
    stack: Stack, procedure: str, body: dict[str, Any], token: str | None
) -> tuple[int, dict[str, Any]]:
    return await asyncio.to_thread(
        curl,
        "-X",
        "POST",
        f"{stack.url}/{procedure}",
        "-H",
        JSON,
        "-d",
        json.dumps(body),
        token=token,
    )


async def rest(stack: Stack, verb: str, path: str, token: str | None) -> tuple[int, Any]:
    return await asyncio.to_thread(curl, "-X", verb, f"{stack.url}{path}", token=token)


def forged_tokens(user_id: str, tmp_path: Path) -> dict[str, str]:
    """Every kind of bad token for `user_id`."""
    private = (tokens.KEYS / "private.pem").read_bytes()
    other_keys = tmp_path / "other-keys"
    ensure_dev_keys(other_keys)
    other_private = (other_keys / "private.pem").read_bytes()
    real_kid = jwt.get_unverified_header(tokens.token(user_id))["kid"]
    now = int(time.time())
    claims = {"sub": user_id, "iss": "shop-dev", "aud": "shop", "iat": now, "exp": now + 600}
    return {
        "expired": mint(private, user_id, now=now - 7200),
        "wrong signature": jwt.encode(
            claims, other_private, algorithm="ES256", headers={"kid": real_kid}
        ),
        "unknown key": mint(other_private, user_id),
        "wrong audience": mint(private, user_id, audience="another-api"),
        "wrong issuer": mint(private, user_id, issuer="someone-else"),
        "alg none": jwt.encode(claims, None, algorithm="none"),  # type: ignore[arg-type]
        "not a jwt": "not-a-token",
    }


async def test_bad_tokens_are_refused_with_401_and_change_nothing(
    stack: Stack, tmp_path: Path
) -> None:
    user = await stack.mesh.user()
    rename = {"user": {"id": user.id, "displayName": "Mallory"}, "updateMask": "displayName"}
    update = "shop.user.v1.UserService/UpdateUser"

    status, body = await connect(stack, update, rename, token=None)
    assert (status, body["code"]) == (401, "unauthenticated")
    status, body = await rest(stack, "GET", f"/v1/users/{user.id}", token=None)
    assert (status, body["code"]) == (401, 16)

    for name, bad in forged_tokens(user.id, tmp_path).items():
        status, body = await connect(stack, update, rename, token=bad)
        assert (status, body["code"]) == (401, "unauthenticated"), name
        assert "Traceback" not in json.dumps(body) and bad not in json.dumps(body), name
        status, body = await rest(stack, "GET", f"/v1/users/{user.id}", token=bad)
        assert (status, body["code"]) == (401, 16), name

    reply = await stack.mesh.users.GetUser(user_pb2.GetUserRequest(id=user.id))
    assert reply.user.display_name == user.display_name  # nothing changed

    # The same token is fine for its own user.
    status, body = await connect(stack, update, rename, token=tokens.token(user.id))
    assert status == 200 and body["user"]["displayName"] == "Mallory"


async def test_public_calls_need_no_token(stack: Stack) -> None:
    status, body = await connect(
        stack,
        "shop.user.v1.UserService/CreateUser",
        {"email": "new@example.com", "displayName": "New"},
        token=None,
    )
    assert status == 200 and body["user"]["email"] == "new@example.com"
    status, _ = await rest(stack, "GET", "/v1/products", token=None)
    assert status == 200
    # ...but writing the catalogue needs the admin role.
    status, body = await connect(
        stack,
        "shop.product.v1.ProductService/CreateProduct",
        {"name": "Mug", "price": {"currencyCode": "EUR", "amountMinor": "100"}, "stock": 1},
        token=tokens.token(body["user"]["id"]),
    )
    assert (status, body["code"]) == (403, "permission_denied")


@pytest.fixture
async def two_shoppers(stack: Stack) -> tuple[Any, Any, order_pb2.Order]:
    """Ann with an order (and so a notification), and Bob."""
    ann, bob = await stack.mesh.user(), await stack.mesh.user()
    product = await stack.mesh.product(stock=5)
    placed = await stack.mesh.orders.CreateOrder(
        stack.mesh.order_request(ann.id, {product.id: 1}), metadata=tokens.bearer(ann.id)
    )
    return ann, bob, placed.order


async def test_one_user_cannot_see_anothers_orders_or_notifications(
    stack: Stack, two_shoppers: tuple[Any, Any, order_pb2.Order]
) -> None:
    ann, bob, order = two_shoppers
    as_bob = tokens.token(bob.id)
    # Connect
    for procedure, body in [
        ("shop.order.v1.OrderService/GetOrder", {"id": order.id}),
        ("shop.order.v1.OrderService/ListOrders", {"userId": ann.id}),
        ("shop.order.v1.OrderService/CancelOrder", {"id": order.id}),
        ("shop.notification.v1.NotificationService/ListNotifications", {"userId": ann.id}),
        ("shop.user.v1.UserService/GetUser", {"id": ann.id}),
    ]:
        status, reply = await connect(stack, procedure, body, token=as_bob)
        assert (status, reply["code"]) == (403, "permission_denied"), procedure
    # REST, the live stream (SSE) included
    for path in [
        f"/v1/orders/{order.id}",
        f"/v1/orders?userId={ann.id}",
        f"/v1/users/{ann.id}/orders",
        f"/v1/users/{ann.id}/notifications",
    ]:
        status, reply = await rest(stack, "GET", path, token=as_bob)
        assert status in (403, 404), path
        if status == 403:
            assert reply["code"] == 7, path
    status, reply = await rest(
        stack, "GET", f"/v1/users/{ann.id}/notifications:stream", token=as_bob
    )
    assert "event: error" in reply.get("text", "") or status == 403
    assert '"code":7' in reply.get("text", "").replace(" ", "") or status == 403
    # gRPC through the gateway, the stream included
    async with grpc.aio.insecure_channel(stack.url.removeprefix("http://")) as channel:
        orders = order_pb2_grpc.OrderServiceStub(channel)
        notifications = notification_pb2_grpc.NotificationServiceStub(channel)
        bob_metadata = tokens.bearer(bob.id)
        await fails(
            orders.ListOrders(order_pb2.ListOrdersRequest(user_id=ann.id), metadata=bob_metadata),
            grpc.StatusCode.PERMISSION_DENIED,
        )
        stream = notifications.StreamNotifications(
            notification_pb2.StreamNotificationsRequest(user_id=ann.id), metadata=bob_metadata
        )
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stream.read()
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    # gRPC-Web and Connect binary, with the generated client
    for protocol in (ProtocolType.GRPC_WEB, ProtocolType.CONNECT):
        async with notification_connect.NotificationServiceClient(
            stack.url, protocol=protocol, interceptors=[tokens.ConnectBearer(as_bob)]
        ) as client:
            with pytest.raises(ConnectError) as denied:
                await client.list_notifications(
                    notification_pb2.ListNotificationsRequest(user_id=ann.id)
                )
            assert denied.value.code == Code.PERMISSION_DENIED, protocol
    # Ann's order is as it was; Ann herself sees it.
    status, reply = await connect(
        stack, "shop.order.v1.OrderService/GetOrder", {"id": order.id}, token=tokens.token(ann.id)
    )
    assert status == 200 and reply["order"]["status"] == "ORDER_STATUS_PLACED"


async def test_services_enforce_ownership_without_the_gateway(
    stack: Stack, two_shoppers: tuple[Any, Any, order_pb2.Order]
) -> None:
    ann, bob, order = two_shoppers
    address = f"127.0.0.1:{stack.mesh.ports['order']}"
    async with tokens.service_channel(address) as channel:  # straight to the service
        orders = order_pb2_grpc.OrderServiceStub(channel)
        await fails(
            orders.GetOrder(order_pb2.GetOrderRequest(id=order.id)),
            grpc.StatusCode.UNAUTHENTICATED,
        )
        await fails(
            orders.CancelOrder(
                order_pb2.CancelOrderRequest(id=order.id), metadata=tokens.bearer(bob.id)
            ),
            grpc.StatusCode.PERMISSION_DENIED,
        )
        forged = (("authorization", "Bearer " + tokens.token(ann.id)[:-4] + "AAAA"),)
        await fails(
            orders.GetOrder(order_pb2.GetOrderRequest(id=order.id), metadata=forged),
            grpc.StatusCode.UNAUTHENTICATED,
        )
        mine = await orders.GetOrder(
            order_pb2.GetOrderRequest(id=order.id), metadata=tokens.bearer(ann.id)
        )
        assert mine.order.status == order_pb2.ORDER_STATUS_PLACED


async def test_tokens_never_reach_the_logs(tmp_path: Path) -> None:

    good, bad = tokens.token("usr_logs"), tokens.token("usr_logs")[:-8] + "AAAAAAAA"
    env = {"DATA_DIR": str(tmp_path), "LOG_LEVEL": "DEBUG"}
    async with service_process("user", env) as process:
        async with tokens.service_channel(process.address) as channel:
            stub = user_pb2_grpc.UserServiceStub(channel)
            for token in (good, bad):
                with pytest.raises(grpc.aio.AioRpcError):
                    await stub.GetUser(
                        user_pb2.GetUserRequest(id="usr_logs"),
                        metadata=(("authorization", f"Bearer {token}"),),
                    )
        await process.stop()
    logged = "\n".join(process.stderr_lines)
    assert "GetUser" in logged  # the calls were logged...
    assert good not in logged and bad not in logged  # ...their tokens were not
    assert good.split(".")[2] not in logged


async def test_the_gateway_publishes_the_public_keys_its_tokens_verify_with(
    stack: Stack,
) -> None:
    result = await asyncio.to_thread(
        subprocess.run,
        ["curl", "-s", "-m", "10", "-D", "-", f"{stack.url}/.well-known/jwks.json"],
        capture_output=True,
        text=True,
        check=True,
    )
    head, _, body = result.stdout.partition("\n\n")  # text mode: \r\n read as \n
    assert head.startswith("HTTP/1.1 200"), head
    assert "cache-control: public, max-age=300" in head.lower()
    published = json.loads(body)
    assert published["keys"], published
    for key in published["keys"]:
        assert not {"d", "p", "q", "dp", "dq", "qi", "k"} & key.keys(), key  # public only
        assert (key["use"], key["alg"]) == ("sig", "ES256") and key["kid"]
    # A party holding only the published set verifies the mesh's tokens.
    keys = {key.key_id: key for key in jwt.PyJWKSet.from_dict(published).keys}
    token = tokens.token("usr_jwks")
    key = keys[jwt.get_unverified_header(token)["kid"]]
    claims = jwt.decode(token, key.key, algorithms=["ES256"], audience="shop")
    assert claims["sub"] == "usr_jwks"
