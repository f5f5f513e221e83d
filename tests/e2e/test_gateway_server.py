"""The gateway's HTTP server (gateway/server.py): HTTP/1.1 and HTTP/2 on one port, a
bounded request head, gRPC refused cleanly over HTTP/1.1, and a graceful stop that
closes idle connections of both kinds and ends open streams."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import h2.config
import h2.connection
import h2.events
import pytest

from gateway.server import MAX_HEAD_BYTES
from shop.notification.v1 import notification_pb2, notification_pb2_grpc
from shop.product.v1 import product_pb2, product_pb2_grpc
from tests import tokens
from tests.e2e.conftest import Stack, gateway_env
from tests.mesh import running_mesh
from tests.processes import ServiceProcess, service_process


def _address(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)


def _exchange(url: str, request: bytes) -> bytes:
    """Sends `request` on a new connection and reads until the server closes it."""
    with socket.create_connection(_address(url), timeout=10) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        return answer


def _get(path: str, *headers: bytes) -> bytes:
    head = b"".join(header + b"\r\n" for header in headers)
    start = b"GET " + path.encode() + b" HTTP/1.1\r\nhost: x\r\n"
    return start + head + b"connection: close\r\n\r\n"


async def test_a_request_head_over_the_limit_is_refused_with_431(stack: Stack) -> None:
    under = b"x-tenant: " + b"a" * (MAX_HEAD_BYTES - 1024)
    answer = await asyncio.to_thread(_exchange, stack.url, _get("/healthz", under))
    assert answer.startswith(b"HTTP/1.1 200 ")

    over = b"x-tenant: " + b"a" * (MAX_HEAD_BYTES + 1024)
    answer = await asyncio.to_thread(_exchange, stack.url, _get("/healthz", over))
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431 ")
    assert json.loads(body) == {  # as REST answers: a google.rpc.Status
        "code": 8,
        "message": "the request headers are too large",
        "details": [],
    }
    # A procedure's caller gets the Connect error JSON.
    request = _get("/shop.product.v1.ProductService/GetProduct", over)
    answer = await asyncio.to_thread(_exchange, stack.url, request)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431 ")
    assert json.loads(body)["code"] == "resource_exhausted"

    # A long query string counts as much as a header does.
    query = "/v1/products?page_token=" + "a" * (MAX_HEAD_BYTES + 1024)
    answer = await asyncio.to_thread(_exchange, stack.url, _get(query))
    assert answer.startswith(b"HTTP/1.1 431 ")

    many = [b"x-%d: y" % i for i in range(MAX_HEAD_BYTES // 6)]  # small headers, many
    answer = await asyncio.to_thread(_exchange, stack.url, _get("/healthz", *many))
    assert answer.startswith(b"HTTP/1.1 431 ")


def _endless_header(url: str, megabytes: int) -> str:
    """Streams one header line forever (well, `megabytes`); how the server ended it."""
    with socket.create_connection(_address(url), timeout=10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-endless: ")
        try:
            for _ in range(megabytes * 16):
                sock.sendall(b"a" * 65536)
        except (BrokenPipeError, ConnectionResetError):
            return "closed while sending"
        return "accepted every byte"


async def test_a_header_that_never_ends_is_cut_off_and_the_gateway_goes_on(
    stack: Stack,
) -> None:
    assert await asyncio.to_thread(_endless_header, stack.url, 64) == "closed while sending"
    answer = await asyncio.to_thread(_exchange, stack.url, _get("/healthz"))
    assert answer.startswith(b"HTTP/1.1 200 ")


async def test_grpc_over_http1_is_unimplemented_in_grpc_terms(stack: Stack, tmp_path: Path) -> None:
    message = product_pb2.GetProductRequest(id="prd_missing").SerializeToString()
    (tmp_path / "body").write_bytes(b"\x00" + len(message).to_bytes(4, "big") + message)
    command = ["curl", "-s", "--http1.1", "-D", "-", "-o", "/dev/null", "-X", "POST"]
    command += ["-H", "content-type: application/grpc", "--data-binary", f"@{tmp_path / 'body'}"]
    command += [f"{stack.url}/shop.product.v1.ProductService/GetProduct"]
    result = await asyncio.to_thread(
        subprocess.run, command, capture_output=True, text=True, check=True
    )
    headers = dict(line.split(": ", 1) for line in result.stdout.splitlines()[1:] if ": " in line)
    assert result.stdout.startswith("HTTP/1.1 200")
    assert headers["grpc-status"] == "12"
    assert "HTTP/2" in headers["grpc-message"]
    assert not [line for line in stack.gateway_log if "Traceback" in line]


def _open_h2_connection(url: str) -> socket.socket:
    """An HTTP/2 connection that has answered one request and sits idle."""
    sock = socket.create_connection(_address(url), timeout=10)
    connection = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    connection.initiate_connection()
    headers = [(":method", "GET"), (":path", "/healthz"), (":scheme", "http")]
    connection.send_headers(1, [*headers, (":authority", "x")], end_stream=True)
    sock.sendall(connection.data_to_send())
    while True:
        events = connection.receive_data(sock.recv(65536))
        sock.sendall(connection.data_to_send())
        if any(isinstance(event, h2.events.StreamEnded) for event in events):
            return sock


def _open_h1_connection(url: str) -> socket.socket:
    """An HTTP/1.1 keep-alive connection that has answered one request and sits idle."""
    sock = socket.create_connection(_address(url), timeout=10)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
    assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
    return sock


def _closed_by_server(sock: socket.socket) -> bool:
    try:
        while sock.recv(65536):
            pass  # a GOAWAY frame, then the end
        return True
    except (ConnectionResetError, TimeoutError):
        return False
    finally:
        sock.close()


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[ServiceProcess]:
    """A gateway process of its own (these tests stop it) in front of a whole mesh."""
    async with (
        running_mesh(tmp_path) as mesh,
        service_process("gateway", gateway_env(mesh), module="gateway") as process,
    ):
        yield process


async def test_the_gateway_stops_gracefully_with_connections_of_both_kinds_open(
    gateway: ServiceProcess,
) -> None:
    url = f"http://{gateway.address}"
    # A gRPC call (HTTP/2), then a connection of each kind left idle.
    async with grpc.aio.insecure_channel(gateway.address) as channel:
        stub = product_pb2_grpc.ProductServiceStub(channel)
        with_grpc = await stub.ListProducts(
            product_pb2.ListProductsRequest(page_size=1),
            metadata=(("authorization", f"Bearer {tokens.ADMIN_TOKEN}"),),
        )
    h1 = await asyncio.to_thread(_open_h1_connection, url)
    h2_idle = await asyncio.to_thread(_open_h2_connection, url)
    assert isinstance(with_grpc, product_pb2.ListProductsResponse)
    started = time.monotonic()
    code = await gateway.stop(grace=15.0)
    took = time.monotonic() - started
    assert code == 0 and not gateway.killed
    assert took < 5.0, f"idle connections held the stop for {took:.1f} s"
    assert await asyncio.to_thread(_closed_by_server, h1)
    assert await asyncio.to_thread(_closed_by_server, h2_idle)
    assert not [line for line in gateway.stderr_lines if "Traceback" in line]
    # The gateway's own lines only: uvicorn's lifespan steps are not logged at INFO.
    loggers = {json.loads(line)["logger"] for line in gateway.stderr_lines if line.startswith("{")}
    assert not {name for name in loggers if name.startswith("uvicorn")}, loggers


async def test_streams_open_at_the_stop_end_within_the_grace_without_an_error_logged(
    gateway: ServiceProcess, tmp_path: Path
) -> None:
    url = f"http://{gateway.address}"
    sse = ["curl", "-s", "-N", "-H", tokens.ADMIN_HEADER]
    sse += [f"{url}/v1/users/{tokens.ADMIN_ID}/notifications:stream"]
    envelope = tmp_path / "envelope"
    message = json.dumps({"userId": tokens.ADMIN_ID}).encode()
    envelope.write_bytes(b"\x00" + len(message).to_bytes(4, "big") + message)
    connect = ["curl", "-s", "-N", "-X", "POST", "-H", tokens.ADMIN_HEADER]
    connect += ["-H", "content-type: application/connect+json"]
    connect += ["--data-binary", f"@{envelope}"]
    connect += [f"{url}/shop.notification.v1.NotificationService/StreamNotifications"]
    streams = [
        await asyncio.create_subprocess_exec(*command, stdout=asyncio.subprocess.PIPE)
        for command in (sse, connect)
    ]
    channel = grpc.aio.insecure_channel(gateway.address)  # and one over gRPC (HTTP/2)
    with_grpc = notification_pb2_grpc.NotificationServiceStub(channel).StreamNotifications(
        notification_pb2.StreamNotificationsRequest(user_id=tokens.ADMIN_ID),
        metadata=(("authorization", f"Bearer {tokens.ADMIN_TOKEN}"),),
    )

    async def read_grpc() -> str:
        try:
            async for _ in with_grpc:
                pass
        except grpc.aio.AioRpcError as error:
            return str(error.code().name)
        return "OK"

    grpc_reader = asyncio.create_task(read_grpc())
    try:
        await asyncio.sleep(1.0)  # all three open and waiting for events
        started = time.monotonic()
        code = await gateway.stop(grace=15.0)
        took = time.monotonic() - started
        outputs = [await asyncio.wait_for(stream.communicate(), 5) for stream in streams]
        grpc_ended = await asyncio.wait_for(grpc_reader, 5)
    finally:
        for stream in streams:
            if stream.returncode is None:
                stream.kill()
                await stream.wait()
        grpc_reader.cancel()
        await channel.close()
    assert code == 0 and not gateway.killed
    # The grace (5 s), then the ending: a gRPC stream held the stop for ever before.
    assert took < 8.0, f"the stop took {took:.1f} s"
    assert [stream.returncode for stream in streams] == [0, 0], outputs
    assert grpc_ended == "UNAVAILABLE"  # its connection closed: the client may reconnect
    logged = [line for line in gateway.stderr_lines if '"level": "ERROR"' in line]
    assert not logged, logged
