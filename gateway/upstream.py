"""Calls to the internal gRPC services: one long-lived channel per service, the
caller's deadline, request id and allowed headers passed on (the trace context
is added by the channel's OpenTelemetry interceptor)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor

from gateway import edge
from gateway.edge import REQUEST_ID
from gateway.registry import procedure
from services.common import clients
from services.common.config import BreakerSettings
from services.common.tls import TlsSettings

CLIENT_ADDRESS = "x-client-address"


@dataclass(frozen=True)
class CallOptions:
    timeout: float | None
    metadata: tuple[tuple[str, str], ...]
    request_id: str


def call_options(
    headers: Mapping[str, str],
    timeout: float | None,
    forward: tuple[str, ...],
) -> CallOptions:
    """What goes with a forwarded call; `headers` are the incoming HTTP headers (any case)."""
    lowered = {k.lower(): v for k, v in headers.items()}
    exchange = edge.current()
    request_id = exchange.request_id if exchange is not None else uuid.uuid4().hex
    metadata = [(REQUEST_ID, request_id)]
    if exchange is not None and exchange.client:
        # Who is calling, for limits a service keeps per client (sign-in failures). Never
        # the client's own header of that name: only the gateway's word counts.
        metadata.append((CLIENT_ADDRESS, exchange.client))
    metadata += [
        (name, lowered[name]) for name in forward if name != CLIENT_ADDRESS and lowered.get(name)
    ]
    if lowered.get("authorization"):  # verified by the gateway, verified again by the service
        metadata.append(("authorization", lowered["authorization"]))
    return CallOptions(timeout, tuple(metadata), request_id)


class Upstreams:
    """A channel per internal service, made on first use in the serving event loop
    (grpc.aio channels belong to the loop they were made in)."""

    def __init__(
        self, addresses: Mapping[str, str], breaker: BreakerSettings, tls: TlsSettings
    ) -> None:
        self._addresses = addresses
        self._breaker = breaker
        self._tls = tls
        self._channels: dict[tuple[str, int], grpc.aio.Channel] = {}

    def channel(self, service: str) -> grpc.aio.Channel:
        key = (service, id(asyncio.get_running_loop()))
        if key not in self._channels:
            # No default timeout: the gateway sets every call's deadline itself.
            self._channels[key] = clients.channel(
                self._addresses[service],
                peer=service,
                default_timeout=None,
                breaker=self._breaker,
                tls=self._tls,
            )
        return self._channels[key]

    def method(self, upstream: str, method: MethodDescriptor) -> Callable[..., Any]:
        """A callable like a grpc multicallable: `call(request, timeout=, metadata=)`."""
        path = procedure(method)
        output = message_factory.GetMessageClass(method.output_type)

        def serialize(request: Any) -> bytes:
            return bytes(request.SerializeToString())

        callables: dict[int, Any] = {}  # one multicallable per event loop, made once

        def call(request: Any, **kwargs: Any) -> Any:
            loop = id(asyncio.get_running_loop())
            multicallable = callables.get(loop)
            if multicallable is None:
                channel = self.channel(upstream)
                kind = channel.unary_stream if method.server_streaming else channel.unary_unary
                multicallable = kind(
                    path, request_serializer=serialize, response_deserializer=output.FromString
                )
                callables[loop] = multicallable
            return multicallable(request, **kwargs)

        return call

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()


async def stream(call: Any) -> AsyncIterator[Any]:
    """Iterates a server-streaming call, cancelling it if the consumer stops early."""
    try:
        async for response in call:
            yield response
    finally:
        call.cancel()
