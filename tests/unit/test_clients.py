import asyncio

import pytest

from services.common import clients, deadline


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
    import grpc
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
