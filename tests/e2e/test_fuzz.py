"""A bounded fuzz run at the edge: malformed Connect envelopes, gRPC frames, bodies
and headers. Nothing answers 5xx (or INTERNAL/UNKNOWN over gRPC), nothing crashes,
and no data changes."""

from __future__ import annotations

import asyncio
import random
import subprocess
from pathlib import Path

from shop.user.v1 import user_pb2
from tests import tokens
from tests.e2e.conftest import Stack

SEED = 20261124
CASES = 80
PROCEDURES = [
    "/shop.user.v1.UserService/CreateUser",
    "/shop.user.v1.UserService/UpdateUser",
    "/shop.product.v1.ProductService/CreateProduct",
    "/shop.order.v1.OrderService/CreateOrder",
    "/shop.order.v1.OrderService/CancelOrder",
    "/shop.notification.v1.NotificationService/MarkRead",
    "/shop.notification.v1.NotificationService/StreamNotifications",
]
JUNK_HEADERS = [
    "connect-timeout-ms: -5",
    "connect-timeout-ms: 99999999999999999999",
    "grpc-timeout: 1Z",
    "connect-protocol-version: 7",
    "content-encoding: gzip",
    "connect-content-encoding: br",
    "grpc-encoding: snappy",
    "authorization: Bearer",
    "authorization: Basic Zm9vOmJhcg==",
    f"authorization: Bearer {tokens.ADMIN_TOKEN[:-6]}",
    "x-request-id: " + "x" * 5000,
]


def envelope(rng: random.Random) -> bytes:
    """A Connect/gRPC length-prefixed message, broken in one of several ways."""
    payload = rng.randbytes(rng.randint(0, 64))
    kind = rng.choice(["length too long", "length too short", "flags", "truncated", "random"])
    if kind == "length too long":
        return b"\x00" + (len(payload) + rng.randint(1, 1 << 30)).to_bytes(4, "big") + payload
    if kind == "length too short":
        return b"\x00" + max(0, len(payload) - 3).to_bytes(4, "big") + payload
    if kind == "flags":
        return (
            bytes([rng.choice([0x01, 0x04, 0x7F, 0xFF])])
            + len(payload).to_bytes(4, "big")
            + payload
        )
    if kind == "truncated":
        return b"\x00\x00\x00"
    return rng.randbytes(rng.randint(0, 80))


def request(rng: random.Random, url: str, work: Path, index: int) -> tuple[list[str], str]:
    """A curl command for one malformed request, and its protocol."""
    procedure = rng.choice(PROCEDURES)
    protocol = rng.choice(["connect-json", "connect-proto", "connect-stream", "grpc", "grpc-web"])
    body = work / f"body-{index}.bin"
    if protocol == "connect-json":
        text = rng.choice(['{"', "[]", "null", '{"userId": 5}', '{"items": [{}]}', "\u0000"])
        body.write_bytes(text.encode() + rng.randbytes(rng.randint(0, 16)))
        content_type = "application/json"
    elif protocol == "connect-proto":
        body.write_bytes(rng.randbytes(rng.randint(0, 80)))
        content_type = "application/proto"
    else:
        body.write_bytes(envelope(rng))
        content_type = {
            "connect-stream": "application/connect+json",
            "grpc": "application/grpc",
            "grpc-web": "application/grpc-web+proto",
        }[protocol]
    command = ["curl", "-s", "-m", "10", "-o", "/dev/null", "-D", "-", "-X", "POST"]
    if protocol == "grpc":
        command += ["--http2-prior-knowledge", "-H", "te: trailers"]
    command += ["-H", f"content-type: {content_type}", "-H", tokens.ADMIN_HEADER]
    for header in rng.sample(JUNK_HEADERS, rng.randint(0, 2)):
        command += ["-H", header]
    command += ["--data-binary", f"@{body}", f"{url}{procedure}"]
    return command, protocol


def _run(command: list[str]) -> str:
    return subprocess.run(command, capture_output=True, text=True, timeout=30).stdout


async def counts(stack: Stack) -> tuple[int, ...]:
    return (
        await stack.mesh.sql("user", "SELECT count(*) FROM users"),
        await stack.mesh.sql("product", "SELECT count(*) FROM products"),
        await stack.mesh.sql("order", "SELECT count(*) FROM orders"),
        await stack.mesh.sql("notification", "SELECT count(*) FROM notifications"),
    )


async def test_malformed_envelopes_frames_bodies_and_headers(stack: Stack, tmp_path: Path) -> None:
    user = await stack.mesh.user()
    await stack.mesh.product(stock=3)
    before = await counts(stack)
    rng = random.Random(SEED)
    answers: list[tuple[str, int, str, str]] = []
    for index in range(CASES):
        command, protocol = request(rng, stack.url, tmp_path, index)
        head = await asyncio.to_thread(_run, command)
        assert head, f"no answer to {command}"  # the gateway is still there
        status = int(head.split()[1])
        grpc_status = next(
            (
                line.split(":", 1)[1].strip()
                for line in head.splitlines()
                if line.lower().startswith("grpc-status:")
            ),
            "",
        )
        grpc_message = next(
            (
                line.split(":", 1)[1].strip()
                for line in head.splitlines()
                if line.lower().startswith("grpc-message:")
            ),
            "",
        )
        answers.append((protocol, status, grpc_status, grpc_message))
    # The gRPC spec itself answers one framing violation with INTERNAL: a message flagged
    # compressed on a call that declared no compression. Everything else is a 4xx-class code.
    server_errors = [
        answer
        for answer in answers
        if answer[1] >= 500
        or answer[2] == "2"
        or (answer[2] == "13" and not answer[3].startswith("protocol%20error"))
    ]
    assert server_errors == [], server_errors
    assert {answer[0] for answer in answers} >= {"connect-json", "grpc", "grpc-web"}
    assert await counts(stack) == before  # nothing written
    health = await asyncio.to_thread(
        _run, ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", f"{stack.url}/healthz"]
    )
    assert health == "200"
    still = await stack.mesh.users.GetUser(user_pb2.GetUserRequest(id=user.id))
    assert still.user.id == user.id
