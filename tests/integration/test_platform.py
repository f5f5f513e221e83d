"""What every service gets from services.common: health, reflection, logs, deadlines, errors."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common import clients
from services.common.interceptors import Context
from services.common.server import ServiceSpec
from services.product.wiring import SPEC as PRODUCT
from services.user.wiring import SPEC as USER
from shop.user.v1 import user_pb2, user_pb2_grpc
from tests import tokens
from tests.conftest import pg_admin_dsn, postgres_database, running, user_service_serving
from tests.processes import service_process
from tests.rpc import fails

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def health_of(channel: grpc.aio.Channel, service: str = "") -> int:
    stub: Any = health_pb2_grpc.HealthStub(channel)  # its typeshed stub lists no methods
    response = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    return int(response.status)


async def wait_for_health(channel: grpc.aio.Channel, wanted: int, service: str = "") -> None:
    deadline = time.monotonic() + 10
    while await health_of(channel, service) != wanted:
        assert time.monotonic() < deadline, f"health never became {wanted}"
        await asyncio.sleep(0.1)


async def test_health_follows_the_database(tmp_path: Path) -> None:
    """Readiness ("" and each service) follows the database, on the mTLS port and on the
    plaintext health port that probes use; "liveness" stays SERVING meanwhile."""
    async with postgres_database() as url, running(PRODUCT, url, tmp_path) as (service, channel):
        probe = grpc.aio.insecure_channel(f"127.0.0.1:{service.health_port}")
        assert await health_of(channel) == SERVING
        assert await health_of(probe) == SERVING
        assert await health_of(channel, "shop.product.v1.ProductService") == SERVING

        name = url.rsplit("/", 1)[1]
        admin = await asyncpg.connect(pg_admin_dsn())
        try:
            await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
            await wait_for_health(channel, NOT_SERVING)
            assert await health_of(channel, "shop.product.v1.ProductInternalService") == NOT_SERVING
            assert await health_of(probe) == NOT_SERVING
            assert await health_of(probe, "liveness") == SERVING
            await admin.execute(f'CREATE DATABASE "{name}"')
            await wait_for_health(channel, SERVING)
            assert await health_of(probe) == SERVING
            # The plaintext port serves health and nothing else.
            stub = user_pb2_grpc.UserServiceStub(probe)
            await fails(
                stub.GetUser(user_pb2.GetUserRequest(id="x")), grpc.StatusCode.UNIMPLEMENTED
            )
        finally:
            await admin.close()
            await probe.close()


async def test_health_is_not_serving_while_draining(tmp_path: Path) -> None:
    async with running(USER, f"sqlite+aiosqlite:///{tmp_path / 'u.db'}", tmp_path) as (
        service,
        channel,
    ):
        assert await health_of(channel, "shop.user.v1.UserService") == SERVING
        await service.begin_draining()
        assert await health_of(channel, "shop.user.v1.UserService") == NOT_SERVING


def buf(*args: str) -> str:
    executable = shutil.which("buf") or str(Path(__file__).parents[2] / ".venv" / "bin" / "buf")
    result = subprocess.run([executable, *args], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


async def test_reflection_lists_services_and_serves_buf_curl(tmp_path: Path) -> None:
    async with running(USER, f"sqlite+aiosqlite:///{tmp_path / 'u.db'}", tmp_path) as (service, _):
        base = f"https://{service.address}"  # mutual TLS: the test client's certificate
        client = tokens.CLIENT_TLS
        grpc_flags = [
            "--protocol",
            "grpc",
            "--cacert",
            str(client.ca_file),
            "--cert",
            str(client.cert_file),
            "--key",
            str(client.key_file),
        ]
        methods = await asyncio.to_thread(buf, "curl", *grpc_flags, "--list-methods", base)
        listed = set(methods.split())
        assert {
            "shop.user.v1.UserService/CreateUser",
            "shop.user.v1.UserService/UpdateUser",
            "shop.user.v1.UserInternalService/ValidateUser",
            "grpc.health.v1.Health/Check",
        } <= listed

        body = json.dumps({"email": "curl@example.com", "displayName": "Curl"})
        out = await asyncio.to_thread(
            buf, "curl", *grpc_flags, "-d", body, f"{base}/shop.user.v1.UserService/CreateUser"
        )
        created = json.loads(out)["user"]
        assert created["email"] == "curl@example.com" and created["id"].startswith("usr_")


async def test_one_json_log_line_per_rpc_and_clean_shutdown(tmp_path: Path) -> None:
    env = {"DATA_DIR": str(tmp_path), "LOG_LEVEL": "INFO"}
    async with service_process("user", env) as process:
        async with tokens.admin_channel(process.address) as channel:
            stub = user_pb2_grpc.UserServiceStub(channel)
            await stub.CreateUser(
                user_pb2.CreateUserRequest(email="log@example.com", display_name="L")
            )
            await fails(
                stub.GetUser(user_pb2.GetUserRequest(id="usr_none")), grpc.StatusCode.NOT_FOUND
            )
        code = await process.stop()
    assert code == 0, "SIGTERM must end the process cleanly"
    records = [json.loads(line) for line in process.stderr_lines if line.startswith("{")]
    rpcs = [r for r in records if r.get("logger") == "shop.rpc"]
    assert [(r["rpc_method"], r["grpc_code"]) for r in rpcs] == [
        ("/shop.user.v1.UserService/CreateUser", "OK"),
        ("/shop.user.v1.UserService/GetUser", "NOT_FOUND"),
    ]
    for record in rpcs:
        assert len(record["trace_id"]) == 32 and int(record["trace_id"], 16)
        assert record["duration_ms"] >= 0 and record["service"] == "user"
    assert any(r.get("message") == "stopped" for r in records)


class ProbeServicer(user_pb2_grpc.UserServiceServicer):
    """A stand-in handler: relays to a downstream, blocks, or fails, as the test asks."""

    CreateUser = ListUsers = UpdateUser = None  # type: ignore[assignment]  # not served

    def __init__(self, downstream: str | None) -> None:
        self.seen_time_remaining: list[float | None] = []
        self.cancelled = asyncio.Event()
        self._downstream = (
            clients.channel(downstream, tls=tokens.CLIENT_TLS) if downstream else None
        )

    async def close(self) -> None:
        if self._downstream is not None:
            await self._downstream.close()

    async def GetUser(
        self, request: user_pb2.GetUserRequest, context: Context
    ) -> user_pb2.GetUserResponse:
        self.seen_time_remaining.append(context.time_remaining())
        if request.id == "relay" and self._downstream is not None:
            stub = user_pb2_grpc.UserServiceStub(self._downstream)
            return await stub.GetUser(  # no timeout given here
                user_pb2.GetUserRequest(id="record"), metadata=tokens.bearer(tokens.ADMIN_ID)
            )
        if request.id == "block":
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                self.cancelled.set()
                raise
        if request.id == "crash":
            raise RuntimeError("password=hunter2 leaked from a driver")
        return user_pb2.GetUserResponse(user=user_pb2.User(id=request.id))


def probe_spec(servicer: ProbeServicer) -> ServiceSpec:
    return user_service_serving(USER, servicer)


@pytest.fixture
async def probes(
    tmp_path: Path,
) -> AsyncIterator[tuple[ProbeServicer, ProbeServicer, grpc.aio.Channel]]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'probe.db'}"
    downstream = ProbeServicer(None)
    async with running(probe_spec(downstream), url, tmp_path) as (down_service, _):
        upstream = ProbeServicer(down_service.address)
        async with running(probe_spec(upstream), url, tmp_path) as (_, channel):
            yield upstream, downstream, channel
        await upstream.close()


async def test_outgoing_calls_carry_the_remaining_deadline(
    probes: tuple[ProbeServicer, ProbeServicer, grpc.aio.Channel],
) -> None:
    upstream, downstream, channel = probes
    stub = user_pb2_grpc.UserServiceStub(channel)
    await stub.GetUser(user_pb2.GetUserRequest(id="relay"), timeout=2.0)
    (incoming,) = upstream.seen_time_remaining
    (outgoing,) = downstream.seen_time_remaining
    assert incoming is not None and outgoing is not None
    # gRPC sends timeouts rounded up, so allow a few milliseconds either way; what
    # matters is that the downstream got the caller's 2 s, not the channel's 10 s default.
    assert 1.0 < incoming <= 2.05
    assert 1.0 < outgoing <= incoming + 0.05


async def test_handler_is_cancelled_at_the_deadline(
    probes: tuple[ProbeServicer, ProbeServicer, grpc.aio.Channel],
) -> None:
    upstream, _, channel = probes
    stub = user_pb2_grpc.UserServiceStub(channel)
    started = time.monotonic()
    await fails(
        stub.GetUser(user_pb2.GetUserRequest(id="block"), timeout=0.3),
        grpc.StatusCode.DEADLINE_EXCEEDED,
    )
    assert time.monotonic() - started < 2.0
    await asyncio.wait_for(upstream.cancelled.wait(), 2.0)


async def test_unexpected_errors_are_internal_without_their_text(
    probes: tuple[ProbeServicer, ProbeServicer, grpc.aio.Channel],
) -> None:
    _, _, channel = probes
    stub = user_pb2_grpc.UserServiceStub(channel)
    error = await fails(stub.GetUser(user_pb2.GetUserRequest(id="crash")), grpc.StatusCode.INTERNAL)
    assert error.details() == "internal error"
    assert "hunter2" not in str(error.trailing_metadata())


async def test_invalid_requests_never_reach_the_handler(
    probes: tuple[ProbeServicer, ProbeServicer, grpc.aio.Channel],
) -> None:
    upstream, _, channel = probes
    stub = user_pb2_grpc.UserServiceStub(channel)
    await fails(stub.GetUser(user_pb2.GetUserRequest(id="")), grpc.StatusCode.INVALID_ARGUMENT)
    assert upstream.seen_time_remaining == []
