import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import grpc
import pytest

from services.common import clients, deadline
from services.common.config import BreakerSettings

Say = Callable[[bytes, "grpc.aio.ServicerContext[bytes, bytes]"], Awaitable[bytes]]


@asynccontextmanager
async def serving(say: Say) -> AsyncIterator[int]:
    """A grpc.aio server answering /test.Echo/Say with `say`: its port."""
    handler = grpc.method_handlers_generic_handler(
        "test.Echo", {"Say": grpc.unary_unary_rpc_method_handler(say)}
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield port
    finally:
        await server.stop(0)


async def hang(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    """A peer that never answers in time."""
    await asyncio.sleep(30)
    return request


def test_replica_lists_become_a_balanced_target() -> None:
    assert clients.target("127.0.0.1:50052") == "127.0.0.1:50052"
    assert clients.target("127.0.0.1:1, 127.0.0.1:2") == "ipv4:127.0.0.1:1,127.0.0.1:2"
    with pytest.raises(ValueError, match="no address"):
        clients.target(" , ")


def test_a_target_with_a_scheme_is_taken_as_it_is() -> None:
    """Kubernetes: every address a headless Service's name resolves to, round-robin."""
    assert clients.target("dns:///user:50051") == "dns:///user:50051"
    assert clients.target("dns:///user.shop.svc.cluster.local:50051") == (
        "dns:///user.shop.svc.cluster.local:50051"
    )
    assert clients.target("ipv4:10.0.0.1:1,10.0.0.2:1") == "ipv4:10.0.0.1:1,10.0.0.2:1"


async def test_a_dns_target_balances_over_every_address_of_the_name() -> None:
    """`localhost` resolves here; the channel connects and calls through dns:///."""
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = clients.channel(f"dns:///localhost:{port}", default_timeout=5)
    try:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = await stub.Check(health_pb2.HealthCheckRequest())  # type: ignore[attr-defined]
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        await channel.close()
        await server.stop(0)


async def test_outgoing_timeout_is_what_remains_capped_by_the_default() -> None:
    assert deadline.outgoing_timeout(5.0) == 5.0
    token = deadline.set_deadline(1.0)
    try:
        left = deadline.outgoing_timeout(5.0)
        assert left is not None and 0.9 < left <= 1.0
        await asyncio.sleep(0.05)
        later = deadline.outgoing_timeout(None)
        assert later is not None and later < left
    finally:
        deadline.reset_deadline(token)
    assert deadline.remaining() is None


async def test_a_unary_call_carries_the_deadline_the_trace_and_the_callers_metadata() -> None:
    """Unary calls go through `OutgoingUnary`, not a grpc.aio interceptor: what the peer
    receives must be what the interceptor sent (the time left, a traceparent, the
    caller's own metadata), and the answer what the peer said."""
    from opentelemetry import trace

    seen: dict[str, object] = {}

    async def echo(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        seen["metadata"] = dict(context.invocation_metadata() or ())
        seen["time_left"] = context.time_remaining()
        if request == b"missing":
            await context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")
        return request[::-1]

    async with serving(echo) as port:
        channel = clients.channel(f"127.0.0.1:{port}", peer="echo", default_timeout=5)
        try:
            say: Any = channel.unary_unary("/test.Echo/Say")
            incoming = trace.SpanContext(
                trace_id=0x0AF7651916CD43DD8448EB211C80319C,
                span_id=0xB7AD6B7169203331,
                is_remote=True,
                trace_flags=trace.TraceFlags(1),
            )
            token = deadline.set_deadline(2.0)
            try:
                with trace.use_span(trace.NonRecordingSpan(incoming)):
                    assert await say(b"hello", metadata=(("x-request-id", "r-1"),)) == b"olleh"
            finally:
                deadline.reset_deadline(token)
            metadata = seen["metadata"]
            assert isinstance(metadata, dict) and metadata["x-request-id"] == "r-1"
            traceparent = str(metadata["traceparent"])
            assert traceparent.split("-")[1] == "0af7651916cd43dd8448eb211c80319c"
            time_left = seen["time_left"]
            assert isinstance(time_left, float) and 1.0 < time_left <= 2.0

            assert await say(b"abc", timeout=0.5) == b"cba"  # shorter than the default: kept
            time_left = seen["time_left"]
            assert isinstance(time_left, float) and time_left < 0.6

            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await say(b"missing")
            assert (failed.value.code(), failed.value.details()) == (
                grpc.StatusCode.NOT_FOUND,
                "no such thing",
            )
        finally:
            await channel.close()


async def test_an_open_circuit_refuses_unary_calls_without_sending_them() -> None:
    """A peer that does not answer opens the circuit after `threshold` failures; then a
    call fails at once with the breaker's UNAVAILABLE (never tried)."""
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    breaker = BreakerSettings(threshold=2, reset_after=60)
    channel = clients.channel(f"127.0.0.1:{port}", peer="gone", breaker=breaker)
    try:
        say: Any = channel.unary_unary("/test.Echo/Say")
        for _ in range(2):
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await say(b"hello", timeout=1)
            assert not clients.refused_by_breaker(failed.value)
        started = asyncio.get_running_loop().time()
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await say(b"hello", timeout=1)
        assert clients.refused_by_breaker(refused.value)
        assert refused.value.details() == "gone service unavailable (circuit open)"
        assert asyncio.get_running_loop().time() - started < 0.1
    finally:
        await channel.close()


async def test_a_cancelled_call_does_not_reset_the_count_of_failures() -> None:
    """A peer that hangs: calls that reach their deadline count as failures; a call its
    caller cancels (its own deadline cancelling the handler) says nothing of the peer and
    must not reset the count, or the circuit of a hung peer would never open."""
    async with serving(hang) as port:
        breaker = BreakerSettings(threshold=2, reset_after=60)
        channel = clients.channel(f"127.0.0.1:{port}", peer="hung", breaker=breaker)
        try:
            say: Any = channel.unary_unary("/test.Echo/Say")
            with pytest.raises(grpc.aio.AioRpcError) as first:
                await say(b"1", timeout=0.2)
            assert first.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            cancelled = asyncio.create_task(say(b"2", timeout=5))
            await asyncio.sleep(0.2)
            cancelled.cancel()
            with pytest.raises(asyncio.CancelledError):
                await cancelled
            with pytest.raises(grpc.aio.AioRpcError) as second:
                await say(b"3", timeout=0.2)
            assert second.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            # Two failures in a row (the cancelled call between them counted neither way).
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await say(b"4", timeout=0.2)
            assert clients.refused_by_breaker(refused.value)
        finally:
            await channel.close()


async def test_a_half_open_circuit_lets_one_probe_through_at_a_time() -> None:
    """Once the reset window has passed, one call probes the peer; the others are refused
    until its outcome, as a closed circuit would not: a peer still hung takes one call's
    deadline, not every caller's."""
    async with serving(hang) as port:
        breaker = BreakerSettings(threshold=1, reset_after=0.3)
        channel = clients.channel(f"127.0.0.1:{port}", peer="hung", breaker=breaker)
        try:
            say: Any = channel.unary_unary("/test.Echo/Say")
            with pytest.raises(grpc.aio.AioRpcError):
                await say(b"1", timeout=0.2)  # the circuit opens
            await asyncio.sleep(0.4)  # the reset window passes
            probe = asyncio.create_task(say(b"probe", timeout=1.0))
            await asyncio.sleep(0.1)
            with pytest.raises(grpc.aio.AioRpcError) as meanwhile:
                await say(b"2", timeout=1.0)
            assert clients.refused_by_breaker(meanwhile.value)
            with pytest.raises(grpc.aio.AioRpcError) as probed:
                await probe
            assert probed.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            with pytest.raises(grpc.aio.AioRpcError) as reopened:
                await say(b"3", timeout=1.0)
            assert clients.refused_by_breaker(reopened.value)
        finally:
            await channel.close()
