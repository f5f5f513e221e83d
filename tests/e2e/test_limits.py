"""Per-client limits at the gateway: a burst from one client is cut off with 429 and
Retry-After in every protocol, while another client goes on; open streams are capped."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from shop.product.v1 import product_pb2, product_pb2_grpc
from tests import tokens
from tests.e2e.conftest import Stack, gateway_env
from tests.mesh import running_mesh
from tests.processes import service_process

LIST = "/shop.product.v1.ProductService/ListProducts"


@pytest.fixture
async def limited(tmp_path: Path) -> AsyncIterator[Stack]:
    async with running_mesh(tmp_path) as mesh:
        env = {
            **gateway_env(mesh),
            "GATEWAY_RATE_LIMIT": "1",
            "GATEWAY_RATE_BURST": "5",
            "GATEWAY_MAX_STREAMS_PER_CLIENT": "1",
        }
        async with service_process("gateway", env, module="gateway") as gateway:
            yield Stack(mesh, f"http://{gateway.address}", gateway.stderr_lines)


def _curl(source: str, token: str | None, *args: str) -> tuple[int, dict[str, str], str]:
    """curl from a given loopback address; returns status, headers and body."""
    auth = ["-H", f"Authorization: Bearer {token}"] if token else []
    result = subprocess.run(
        ["curl", "-s", "-m", "10", "--interface", source, *auth, "-D", "-", *args],
        capture_output=True,
        text=True,
        check=True,
    )
    # Text mode has turned curl's CRLFs into newlines.
    head, _, body = result.stdout.partition("\n\n")
    lines = head.splitlines()
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


async def curl_from(
    source: str, *args: str, token: str | None = None
) -> tuple[int, dict[str, str], str]:
    """Anonymous unless `token` is given: the limit is then by address."""
    return await asyncio.to_thread(lambda: _curl(source, token, *args))


async def list_products(stack: Stack, source: str) -> tuple[int, dict[str, str], str]:
    return await curl_from(
        source,
        "-X",
        "POST",
        f"{stack.url}{LIST}",
        "-H",
        "content-type: application/json",
        "-d",
        "{}",
    )


async def test_a_burst_from_one_client_is_cut_off_while_another_goes_on(limited: Stack) -> None:
    burst = [await list_products(limited, "127.0.0.1") for _ in range(15)]
    statuses = [status for status, _, _ in burst]
    assert 5 <= statuses.count(200) <= 6  # the burst, and perhaps one token refilled
    assert statuses.count(429) == 15 - statuses.count(200)
    _, headers, body = burst[-1]
    assert int(headers["retry-after"]) >= 1
    assert json.loads(body) == {
        "code": "resource_exhausted",
        "message": f"too many requests; retry in {headers['retry-after']} s",
    }

    # Another client, at the same moment, is not affected.
    other = [await list_products(limited, "127.0.0.2") for _ in range(3)]
    assert [status for status, _, _ in other] == [200, 200, 200]

    # REST and gRPC from the limited client are refused too, in their own forms.
    status, headers, body = await curl_from("127.0.0.1", f"{limited.url}/v1/products")
    assert status == 429 and "retry-after" in headers
    assert json.loads(body)["code"] == 8  # google.rpc.Status, RESOURCE_EXHAUSTED
    channel = grpc.aio.insecure_channel(limited.url.removeprefix("http://"))
    try:
        stub = product_pb2_grpc.ProductServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.ListProducts(product_pb2.ListProductsRequest(), timeout=5)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        await channel.close()


async def test_a_client_may_hold_only_so_many_streams(limited: Stack) -> None:
    user = await limited.mesh.user()
    host, port = limited.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(
            f"GET /v1/users/{user.id}/notifications:stream HTTP/1.1\r\n"
            f"Host: {host}\r\nAccept: text/event-stream\r\n{tokens.ADMIN_HEADER}\r\n\r\n".encode()
        )
        await writer.drain()
        first_line = await asyncio.wait_for(reader.readline(), 5)
        assert first_line.startswith(b"HTTP/1.1 200")

        status, _, body = await curl_from(
            "127.0.0.1",
            f"{limited.url}/v1/users/{user.id}/notifications:stream",
            token=tokens.ADMIN_TOKEN,
        )
        assert status == 429
        assert json.loads(body)["message"] == "at most 1 open streams per client"
    finally:
        writer.close()
