"""gRPC channels to peer services: balanced over replicas, traced, retried where safe,
behind a circuit breaker, and with the caller's deadline.

- Load balancing: `round_robin` over every address of a service, with keepalive
  pings so that a replica that vanished without closing its connection is noticed.
- Retries: gRPC's own retry policy (service config), for unary methods the contracts
  mark NO_SIDE_EFFECTS or IDEMPOTENT (reads, and writes that carry a reservation id),
  on UNAVAILABLE only, with exponential backoff and jitter, and a retry budget
  (`retryThrottling`): when more than about 10% of calls fail, retries stop.
- Circuit breaker (purgatory), one per peer service: after `threshold` calls in a row
  fail with UNAVAILABLE or DEADLINE_EXCEEDED, calls fail at once with UNAVAILABLE for
  `reset_after` seconds; then one call is let through (the others still fail at once
  until its outcome), and its success closes it. A cancelled call counts neither way.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import pkgutil
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from functools import cache, partial
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import descriptor_pb2
from opentelemetry import propagate, trace
from opentelemetry.propagators.textmap import Setter
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from purgatory import AsyncCircuitBreakerFactory
from purgatory.domain.model import HALF_OPENED, OpenedState
from purgatory.service._async.circuitbreaker import AsyncCircuitBreaker

from services.common import deadline
from services.common.config import BreakerSettings
from services.common.tls import TlsSettings

PEER_FAILURES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
RETRY_POLICY = {
    "maxAttempts": 3,
    "initialBackoff": "0.05s",
    "maxBackoff": "0.5s",
    "backoffMultiplier": 2,
    "retryableStatusCodes": ["UNAVAILABLE"],
}
# A token bucket of 10; each failure takes 1, each success gives back 0.1. Retries
# stop while it is at half or less: a mesh in trouble is not hit with retry storms.
RETRY_BUDGET = {"maxTokens": 10, "tokenRatio": 0.1}
SAFE_TO_RETRY = (
    descriptor_pb2.MethodOptions.NO_SIDE_EFFECTS,
    descriptor_pb2.MethodOptions.IDEMPOTENT,
)


class _MetadataSetter(Setter[grpc.aio.Metadata]):
    def set(self, carrier: grpc.aio.Metadata, key: str, value: str) -> None:
        carrier[key] = value


_metadata_setter = _MetadataSetter()


class _Outgoing:
    """The deadline and the trace of every outgoing call.

    - Deadline: the time left on the incoming call, at most (deadline.outgoing_timeout),
      or the call's own timeout if shorter.
    - Trace: a CLIENT span named by the method, child of the current span, whose
      context travels in the metadata (W3C traceparent, or OTEL_PROPAGATORS);
      attributes and status only when the span is recorded."""

    def __init__(self, default_timeout: float | None, tracer: trace.Tracer | None = None) -> None:
        self._default = default_timeout
        self._tracer = tracer or trace.get_tracer("shop.clients")

    def start(
        self, method: str, timeout: float | None, metadata: Any
    ) -> tuple[float | None, grpc.aio.Metadata, Span]:
        """The call's timeout and metadata, and its span (started)."""
        span = self._tracer.start_span(method, kind=SpanKind.CLIENT)
        if span.is_recording():
            service, _, name = method.lstrip("/").partition("/")
            span.set_attribute("rpc.system", "grpc")
            span.set_attribute("rpc.service", service)
            span.set_attribute("rpc.method", name)
        outgoing = grpc.aio.Metadata(*tuple(metadata or ()))
        propagate.inject(outgoing, trace.set_span_in_context(span), _metadata_setter)
        left = deadline.outgoing_timeout(self._default)
        if left is None or (timeout is not None and timeout < left):
            left = timeout
        return left, outgoing, span


def _end(span: Span, code: grpc.StatusCode) -> None:
    if span.is_recording():
        span.set_attribute("rpc.grpc.status_code", code.value[0])
        if code != grpc.StatusCode.OK:
            span.set_status(Status(StatusCode.ERROR, code.name))
    span.end()


class OutgoingUnary:
    """A unary multicallable with the deadline, the trace and (when given) the peer's
    circuit breaker, called as grpc's own: `await stub.Method(request, timeout=...)`.

    Not a grpc.aio interceptor: an intercepted call costs a task of its own and a layer
    of call objects (measured: ~10-20% of the client's CPU per call); this is one
    coroutine around the plain call."""

    __slots__ = ("_breaker", "_call", "_method", "_outgoing")

    def __init__(
        self, call: Any, method: str, outgoing: _Outgoing, breaker: PeerBreaker | None
    ) -> None:
        self._call = call
        self._method = method
        self._outgoing = outgoing
        self._breaker = breaker

    def __call__(
        self,
        request: Any,
        *,
        timeout: float | None = None,
        metadata: Any = None,
        **options: Any,
    ) -> Coroutine[Any, Any, Any]:
        return self._invoke(request, timeout, metadata, options)

    async def _invoke(
        self, request: Any, timeout: float | None, metadata: Any, options: dict[str, Any]
    ) -> Any:
        timeout, outgoing, span = self._outgoing.start(self._method, timeout, metadata)
        call = partial(self._call, request, timeout=timeout, metadata=outgoing, **options)
        try:
            if self._breaker is not None:
                response = await self._breaker.around(call)
            else:
                response = await call()
        except grpc.aio.AioRpcError as error:
            _end(span, error.code())
            raise
        except BaseException:
            _end(span, grpc.StatusCode.CANCELLED)
            raise
        _end(span, grpc.StatusCode.OK)
        return response


class OutgoingStream(grpc.aio.UnaryStreamClientInterceptor):
    """Deadline and trace for server-streaming calls (the span covers the call's start;
    a stream lives as long as its reader wants)."""

    def __init__(self, outgoing: _Outgoing) -> None:
        self._outgoing = outgoing

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        method = details.method
        if isinstance(method, bytes):  # grpc passes bytes (grpc/grpc#31092)
            method = method.decode()
        timeout, metadata, span = self._outgoing.start(method, details.timeout, details.metadata)
        try:
            return await continuation(details._replace(timeout=timeout, metadata=metadata), request)
        finally:
            span.end()


class _ChannelOver(grpc.aio.Channel):
    """A channel standing in for another (`over()`): its state, closing and context
    manager are that channel's."""

    def over(self) -> grpc.aio.Channel:
        raise NotImplementedError

    async def close(self, grace: float | None = None) -> None:
        await self.over().close(grace)

    async def __aenter__(self) -> _ChannelOver:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        return self.over().get_state(try_to_connect)

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        await self.over().wait_for_state_change(last_observed_state)

    async def channel_ready(self) -> None:
        await self.over().channel_ready()


class PeerChannel(_ChannelOver):
    """A peer's channel whose unary calls are `OutgoingUnary`: every other kind of call,
    and the channel's state, are the wrapped channel's."""

    def __init__(
        self, channel: grpc.aio.Channel, outgoing: _Outgoing, breaker: PeerBreaker | None
    ) -> None:
        self.wrapped = channel
        self._outgoing = outgoing
        self._breaker = breaker

    def over(self) -> grpc.aio.Channel:
        return self.wrapped

    def unary_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        call = self.wrapped.unary_unary(method, *args, **kwargs)
        return OutgoingUnary(call, method, self._outgoing, self._breaker)

    def unary_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self.wrapped.unary_stream(method, *args, **kwargs)

    def stream_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self.wrapped.stream_unary(method, *args, **kwargs)

    def stream_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self.wrapped.stream_stream(method, *args, **kwargs)


CIRCUIT_OPEN = "(circuit open)"


def refused_by_breaker(error: grpc.aio.AioRpcError) -> bool:
    """True for the UNAVAILABLE a breaker answers with, without calling the peer."""
    return error.code() == grpc.StatusCode.UNAVAILABLE and (error.details() or "").endswith(
        CIRCUIT_OPEN
    )


def _not_a_peer_failure(error: BaseException) -> bool:
    return not isinstance(error, grpc.aio.AioRpcError) or error.code() not in PEER_FAILURES


class PeerBreaker:
    """Fails fast with UNAVAILABLE while the peer's circuit is open."""

    def __init__(self, peer: str, settings: BreakerSettings) -> None:
        self.peer = peer
        self._breaker: AsyncCircuitBreaker | None = None
        # A call is probing the half-open circuit: the others are refused meanwhile.
        self._probing = False
        self._breakers = AsyncCircuitBreakerFactory(
            default_threshold=settings.threshold,
            default_ttl=settings.reset_after,
            # Only the peer being unreachable or too slow counts: a NOT_FOUND is an answer.
            exclude=[(grpc.aio.AioRpcError, _not_a_peer_failure)],
        )

    async def around(self, call: Callable[[], Awaitable[Any]]) -> Any:
        """`call()` under the peer's breaker: refused (UNAVAILABLE, never sent) while it is
        open, and while it is half-open to every call but the one probing the peer. A call
        cancelled before its outcome counts neither way: as a success it would reset the
        count of failures, and a peer that hangs (its callers' deadlines cancelling them)
        would never open the circuit."""
        if self._breaker is None:  # one object keeps the in-memory breaker's state
            self._breaker = await self._breakers.get_breaker(self.peer)
        breaker = self._breaker
        if self._probing and breaker.context.state == HALF_OPENED:
            raise self._refusal()  # the probe's outcome decides for the others
        try:
            await breaker.__aenter__()
        except OpenedState:
            raise self._refusal() from None
        probe = breaker.context.state == HALF_OPENED
        self._probing = self._probing or probe
        try:
            response = await call()
        except asyncio.CancelledError:
            raise  # no outcome: the breaker is left as the call found it
        except BaseException as error:
            await breaker.__aexit__(type(error), error, error.__traceback__)
            raise
        finally:
            if probe:
                self._probing = False
        await breaker.__aexit__(None, None, None)
        return response

    def _refusal(self) -> grpc.aio.AioRpcError:
        """The UNAVAILABLE of a call the open circuit refused (never sent)."""
        return grpc.aio.AioRpcError(
            grpc.StatusCode.UNAVAILABLE,
            grpc.aio.Metadata(),
            grpc.aio.Metadata(),
            details=f"{self.peer} service unavailable {CIRCUIT_OPEN}",
        )


@cache
def service_config() -> str:
    """The retry policy for every unary method the contracts say is safe to repeat."""
    names = []
    for service in _shop_services():
        for method in service.methods:
            streaming = method.client_streaming or method.server_streaming
            if not streaming and method.GetOptions().idempotency_level in SAFE_TO_RETRY:
                names.append({"service": service.full_name, "method": method.name})
    return json.dumps(
        {
            "methodConfig": [{"name": names, "retryPolicy": RETRY_POLICY}],
            "retryThrottling": RETRY_BUDGET,
        }
    )


def _shop_services() -> list[Any]:
    import shop

    services = []
    for module in pkgutil.walk_packages(shop.__path__, "shop."):
        if module.name.endswith("_pb2"):
            descriptor = importlib.import_module(module.name).DESCRIPTOR
            services += list(descriptor.services_by_name.values())
    return services


def target(addresses: str) -> str:
    """`host:p1,host:p2` as a gRPC target that the round_robin policy spreads over; a
    target with a scheme (`dns:///user:50051`, every address the name resolves to, as
    a Kubernetes headless Service gives) is used as it is."""
    if ":///" in addresses or addresses.startswith(("dns:", "ipv4:", "ipv6:", "unix:")):
        return addresses.strip()
    parts = [a.strip() for a in addresses.split(",") if a.strip()]
    if not parts:
        raise ValueError("no address given")
    if len(parts) == 1:
        return parts[0]
    return "ipv4:" + ",".join(parts)


def channel(
    addresses: str,
    *,
    peer: str = "",
    default_timeout: float | None = 10.0,
    breaker: BreakerSettings | None = None,
    tls: TlsSettings | None = None,
    interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
) -> grpc.aio.Channel:
    """One long-lived channel per peer service, shared by all calls to it."""
    options = [
        ("grpc.lb_policy_name", "round_robin"),
        ("grpc.keepalive_time_ms", 10_000),
        ("grpc.keepalive_timeout_ms", 5_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        # A peer that comes back is reconnected to within 2 s, not after minutes of backoff.
        ("grpc.initial_reconnect_backoff_ms", 200),
        ("grpc.max_reconnect_backoff_ms", 2_000),
        ("grpc.enable_retries", 1),
        ("grpc.service_config", service_config()),
    ]
    breaker_for_peer = None if breaker is None else PeerBreaker(peer or addresses, breaker)
    outgoing = _Outgoing(default_timeout)
    chain: list[grpc.aio.ClientInterceptor] = [OutgoingStream(outgoing), *interceptors]
    if tls is not None and tls.enabled:
        if "," in addresses:
            # An ipv4: list has no single authority: check certificates against the host
            # of the first address (replicas of one service share its name).
            host = addresses.split(",")[0].strip().rsplit(":", 1)[0]
            options.append(("grpc.ssl_target_name_override", host))
        tls_files = tls

        def secure() -> grpc.aio.Channel:
            return grpc.aio.secure_channel(
                target(addresses),
                tls_files.channel_credentials(),
                options=options,
                interceptors=chain,
            )

        return PeerChannel(RotatingChannel(secure, tls.files()), outgoing, breaker_for_peer)
    plain = grpc.aio.insecure_channel(target(addresses), options=options, interceptors=chain)
    return PeerChannel(plain, outgoing, breaker_for_peer)


# How often a channel looks at its certificate files, and how long a channel replaced
# by a rotation is kept for the calls still running on it.
ROTATION_CHECK_SECONDS = 10.0
RETIRED_CHANNEL_SECONDS = 300.0


class RotatingChannel(_ChannelOver):
    """A channel that is made again, with the certificate files as they are now, when
    they change (cert-manager renewing a Secret): new calls go over the new one, calls
    under way finish on the old one, which is closed some minutes later. grpcio reads
    channel credentials once, so without this a client would present its old
    certificate until restarted."""

    def __init__(self, make: Callable[[], grpc.aio.Channel], files: Sequence[Path]) -> None:
        self._make = make
        self._files = list(files)
        self._stamp = self._read_stamp()
        self._checked = time.monotonic()
        self.current = make()
        self.generation = 0
        self._retired: list[grpc.aio.Channel] = []

    def _read_stamp(self) -> list[float]:
        stamp = []
        for path in self._files:
            try:
                stamp.append(path.stat().st_mtime)
            except OSError:
                stamp.append(-1.0)
        return stamp

    def channel(self) -> grpc.aio.Channel:
        """The channel for a new call: made again if the files changed since."""
        now = time.monotonic()
        if now - self._checked >= ROTATION_CHECK_SECONDS:
            self._checked = now
            stamp = self._read_stamp()
            if stamp != self._stamp:
                self._stamp = stamp
                old, self.current = self.current, self._make()
                self.generation += 1
                self._retired.append(old)
                asyncio.get_running_loop().call_later(
                    RETIRED_CHANNEL_SECONDS, lambda: asyncio.ensure_future(self._retire(old))
                )
        return self.current

    async def _retire(self, old: grpc.aio.Channel) -> None:
        if old in self._retired:
            self._retired.remove(old)
            await old.close()

    def unary_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _Rotating(self, "unary_unary", method, args, kwargs)

    def unary_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _Rotating(self, "unary_stream", method, args, kwargs)

    def stream_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _Rotating(self, "stream_unary", method, args, kwargs)

    def stream_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _Rotating(self, "stream_stream", method, args, kwargs)

    def over(self) -> grpc.aio.Channel:
        return self.current

    async def close(self, grace: float | None = None) -> None:
        for old in self._retired:
            await old.close(grace)
        self._retired.clear()
        await self.current.close(grace)


class _Rotating:
    """A multicallable of a RotatingChannel: made on the current channel, once per
    generation (grpc multicallables are worth keeping)."""

    def __init__(
        self, owner: RotatingChannel, kind: str, method: str, args: Any, kwargs: Any
    ) -> None:
        self._owner = owner
        self._kind, self._method, self._args, self._kwargs = kind, method, args, kwargs
        self._generation = -1
        self._callable: Any = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        channel = self._owner.channel()
        if self._generation != self._owner.generation or self._callable is None:
            make = getattr(channel, self._kind)
            self._callable = make(self._method, *self._args, **self._kwargs)
            self._generation = self._owner.generation
        return self._callable(*args, **kwargs)
