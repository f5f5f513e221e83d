"""gRPC server reflection on the gateway: `buf curl` finds the public services, and only
them, with no schema file and no token, and calls them; the gateway logs no traceback."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

from gateway.registry import public_services
from tests.e2e.conftest import Stack
from tests.waits import eventually

BUF = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "buf"
REFLECTION = {
    "grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
}


def buf_curl(*args: str) -> subprocess.CompletedProcess[str]:
    """`buf curl` over real gRPC (cleartext HTTP/2), with the schema from reflection."""
    return subprocess.run(
        [str(BUF), "curl", "--protocol", "grpc", "--http2-prior-knowledge", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_buf_curl_lists_and_calls_the_public_services_by_reflection(stack: Stack) -> None:
    public = {
        f"{service.descriptor.full_name}/{method.name}"
        for service in public_services()
        for method in service.descriptor.methods
    }
    assert len(public) == 22  # 18, and the four of AuthService
    for protocol in ("grpc-v1", "grpc-v1alpha"):
        listed = await asyncio.to_thread(
            buf_curl, "--reflect-protocol", protocol, "--list-methods", stack.url
        )
        assert listed.returncode == 0, listed.stderr
        methods = set(listed.stdout.split())
        assert methods == public | REFLECTION
        assert "shop.user.v1.UserService/GetUser" in methods
        assert not [m for m in methods if "InternalService" in m]

    product = await stack.mesh.product(stock=3)
    called = await asyncio.to_thread(
        buf_curl,
        "-d",
        json.dumps({"id": product.id}),
        f"{stack.url}/shop.product.v1.ProductService/GetProduct",
    )
    assert called.returncode == 0, called.stderr
    reply = json.loads(called.stdout)["product"]
    assert (reply["id"], reply["name"], reply["stock"]) == (product.id, product.name, 3)

    def requests_logged() -> int:
        return sum('"message": "request"' in line for line in stack.gateway_log)

    # The internal services are not served, and reflection does not describe them either.
    before = requests_logged()
    internal = await asyncio.to_thread(
        buf_curl,
        "-d",
        json.dumps({"reservationId": "r1", "items": [{"productId": product.id, "quantity": 1}]}),
        f"{stack.url}/shop.product.v1.ProductInternalService/ReserveStock",
    )
    assert internal.returncode != 0
    assert 'failed to find service named "shop.product.v1.ProductInternalService"' in (
        internal.stderr
    )
    assert await stack.mesh.stock_of(product.id) == [3]

    await eventually(lambda: requests_logged() > before, "the reflection request logged")
    assert [line for line in stack.gateway_log if "Traceback" in line] == []
