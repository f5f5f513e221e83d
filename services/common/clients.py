"""gRPC channels to peer services, balanced over replicas, with deadline propagation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc

from services.common import deadline


class DeadlineInterceptor(
    grpc.aio.UnaryUnaryClientInterceptor,
    grpc.aio.UnaryStreamClientInterceptor,
):
    """Gives every outgoing call the time left on the incoming call, at most."""

    def __init__(self, default_timeout: float | None) -> None:
        self._default = default_timeout

    def _with_deadline(self, details: Any) -> Any:
        timeout = deadline.outgoing_timeout(self._default)
        if timeout is not None and (details.timeout is None or timeout < details.timeout):
            details = details._replace(timeout=timeout)
        return details

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._with_deadline(details), request)

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._with_deadline(details), request)


def target(addresses: str) -> str:
    """`host:p1,host:p2` as a gRPC target that the round_robin policy spreads over."""
    parts = [a.strip() for a in addresses.split(",") if a.strip()]
    if not parts:
        raise ValueError("no address given")
    if len(parts) == 1:
        return parts[0]
    return "ipv4:" + ",".join(parts)


def channel(
    addresses: str,
    *,
    default_timeout: float | None = 10.0,
    interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
) -> grpc.aio.Channel:
    """One long-lived channel per peer service, shared by all calls to it."""
    options = [
        ("grpc.lb_policy_name", "round_robin"),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.enable_retries", 1),
    ]
    return grpc.aio.insecure_channel(
        target(addresses),
        options=options,
        interceptors=[DeadlineInterceptor(default_timeout), *interceptors],
    )
