"""Server concerns: the single place where every RPC gets the platform's behaviour.

Order (outermost first): tracing -> access log -> errors -> deadline ->
authentication -> validation -> the servicer. Each concern is written once, as an
async context manager around the call (`ServerConcern.around`), and `ServerPipeline`
applies them all to unary and server-streaming methods alike.

The context managers are small classes, not `@asynccontextmanager` generators, and
the pipeline nests them in a chain built once per method: per call that is a few
plain method calls per concern, where generators behind an `AsyncExitStack` cost
about five times as much (measured: 24 us against 5 us for five concerns).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import types
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from contextvars import Token
from typing import TYPE_CHECKING, Any, TypeAlias

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from grpc_status import rpc_status
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from services.common import access, auth, deadline, tls, validation
from services.common.errors import DomainError, PermissionDenied, Unauthenticated, internal_status
from services.common.metrics import Metrics

log = logging.getLogger("shop.rpc")

if TYPE_CHECKING:
    Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]
else:
    Context = grpc.aio.ServicerContext

Unary = Callable[[Any, Context], Awaitable[Any]]
Streaming = Callable[[Any, Context], AsyncGenerator[Any, None]]
Written = Callable[[Any, Context], Awaitable[None]]
ExitInfo = tuple[type[BaseException] | None, BaseException | None, types.TracebackType | None]


class Around:
    """One call's passage through one concern: `enter` before the servicer, `leave`
    after it (with the error, if any, which it may replace by raising)."""

    __slots__ = ()

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *exc: Any) -> bool:
        return False


class ServerConcern:
    """One concern around every call: subclasses write `around`, once."""

    def around(self, method: str, request: Any, context: Context) -> Around:
        raise NotImplementedError


class ServerPipeline:
    """The concerns, outermost first, around every method of a service's servicer.

    Applied where the servicer is added to the server, not as a grpc interceptor: an
    interceptor runs on every call to find the method's handler and make a new one,
    which cost more than all the concerns together. Health and reflection, the
    platform's own services, are served without them."""

    def __init__(self, concerns: Sequence[ServerConcern]) -> None:
        self._concerns = tuple(concerns)

    def serving(self, service: ServiceDescriptor, implementation: object) -> object:
        """`implementation` with each of the service's methods behind the concerns, for
        the generated `add_*Servicer_to_server` to add."""
        wrapped = types.SimpleNamespace()
        for method in service.methods:
            path = f"/{service.full_name}/{method.name}"
            behaviour = getattr(implementation, method.name)
            if method.client_streaming:
                raise TypeError(f"{path}: client streaming is not served")
            if method.server_streaming:
                setattr(wrapped, method.name, self._stream(path, behaviour))
            else:
                setattr(wrapped, method.name, self._unary(path, behaviour))
        return wrapped

    def _unary(self, method: str, behaviour: Unary) -> Unary:
        for concern in reversed(self._concerns):
            behaviour = _unary_around(concern, method, behaviour)
        return behaviour

    def _stream(
        self, method: str, behaviour: Streaming
    ) -> Callable[[Any, Context], Awaitable[None]]:
        for concern in reversed(self._concerns):
            behaviour = _stream_around(concern, method, behaviour)
        return _written(behaviour)


def _written(responses: Streaming) -> Written:
    """A server-streaming method served as a coroutine that writes each response: grpc.aio
    never closes a handler's async generator, so a client that goes away while a write
    waits would leave the concerns to the garbage collector (another task, another
    context). Here the write fails inside the call's own task, and every concern unwinds
    in order."""

    async def serve(request: Any, context: Context) -> None:
        async with contextlib.aclosing(responses(request, context)) as stream:
            async for response in stream:
                await context.write(response)

    return serve


def _unary_around(concern: ServerConcern, method: str, inner: Unary) -> Unary:
    async def call(request: Any, context: Context) -> Any:
        async with concern.around(method, request, context):
            return await inner(request, context)

    return call


def _stream_around(concern: ServerConcern, method: str, inner: Streaming) -> Streaming:
    async def call(request: Any, context: Context) -> AsyncGenerator[Any, None]:
        async with (
            concern.around(method, request, context),
            contextlib.aclosing(inner(request, context)) as responses,
        ):
            async for response in responses:
                yield response

    return call


def _code_name(context: Context, error: BaseException | None) -> str:
    # A cancelled call's context may already be torn down: don't touch it.
    if isinstance(error, asyncio.CancelledError | GeneratorExit):
        return "CANCELLED"
    code = context.code()
    if code is None:
        return "OK" if error is None else "UNKNOWN"
    return code.name if isinstance(code, grpc.StatusCode) else str(code)


class ServerTracing(ServerConcern):
    """A server span per call, child of the caller's trace context (W3C traceparent in
    the metadata, or whatever OTEL_PROPAGATORS names). Its ids reach the logs and the
    calls this one makes; attributes are collected only when the span is recorded
    (by default nothing is exported and nothing is recorded: telemetry.configure)."""

    def __init__(self, tracer: trace.Tracer | None = None) -> None:
        self._tracer = tracer or trace.get_tracer("shop.rpc")

    def around(self, method: str, request: Any, context: Context) -> Around:
        return _Traced(self._tracer, method, context)


class _Traced(Around):
    __slots__ = ("_context", "_method", "_span", "_token", "_tracer")

    def __init__(self, tracer: trace.Tracer, method: str, context: Context) -> None:
        self._tracer = tracer
        self._method = method
        self._context = context

    async def __aenter__(self) -> None:
        metadata = self._context.invocation_metadata() or ()
        carrier = {key: value for key, value in metadata if isinstance(value, str)}
        parent = propagate.extract(carrier) if carrier else None
        span = self._tracer.start_span(self._method, context=parent, kind=SpanKind.SERVER)
        if span.is_recording():
            _describe(span, self._method, self._context, carrier)
        self._span = span
        self._token = otel_context.attach(trace.set_span_in_context(span, parent))

    async def __aexit__(self, *exc: Any) -> bool:
        span, error = self._span, exc[1]
        try:
            if span.is_recording():
                code = _code_name(self._context, error)
                status = getattr(grpc.StatusCode, code, grpc.StatusCode.UNKNOWN)
                span.set_attribute("rpc.grpc.status_code", status.value[0])
                if code != "OK":
                    span.set_status(Status(StatusCode.ERROR, code))
        finally:
            span.end()
            otel_context.detach(self._token)
        return False


def _describe(span: Span, method: str, context: Context, metadata: dict[str, str]) -> None:
    """The attributes OpenTelemetry's semantic conventions give a gRPC server span."""
    service, _, name = method.lstrip("/").partition("/")
    span.set_attribute("rpc.system", "grpc")
    span.set_attribute("rpc.service", service)
    span.set_attribute("rpc.method", name)
    if "user-agent" in metadata:
        span.set_attribute("rpc.user_agent", metadata["user-agent"])
    peer = context.peer() or ""
    if peer.startswith(("ipv4:", "ipv6:")):
        host, _, port = peer.split(",")[0].split(":", 1)[1].rpartition(":")
        span.set_attribute("net.peer.ip", host)
        span.set_attribute("net.peer.port", port)


class ServerAccessLog(ServerConcern):
    """Per RPC, the request metrics and one JSON line: method, status code, duration,
    peer (trace ids via the log filter)."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def around(self, method: str, request: Any, context: Context) -> Around:
        return _Logged(self._metrics, method, context)


class _Logged(Around):
    __slots__ = ("_context", "_method", "_metrics", "_peer", "_started")

    def __init__(self, metrics: Metrics, method: str, context: Context) -> None:
        self._metrics = metrics
        self._method = method
        self._context = context

    async def __aenter__(self) -> None:
        self._started = time.perf_counter()
        self._peer = self._context.peer()  # read while the call is alive

    async def __aexit__(self, *exc: Any) -> bool:
        code = _code_name(self._context, exc[1])
        seconds = time.perf_counter() - self._started
        self._metrics.observe_rpc(self._method, code, seconds)
        log.info(
            "rpc",
            extra={
                "rpc_method": self._method,
                "grpc_code": code,
                "duration_ms": round(seconds * 1000, 3),
                "peer": self._peer,
            },
        )
        return False


class ServerErrors(ServerConcern):
    """Domain errors become their status with details; anything unexpected becomes INTERNAL."""

    def around(self, method: str, request: Any, context: Context) -> Around:
        return _ErrorsMapped(method, context)


class _ErrorsMapped(Around):
    __slots__ = ("_context", "_method")

    def __init__(self, method: str, context: Context) -> None:
        self._method = method
        self._context = context

    async def __aexit__(self, *exc: Any) -> bool:
        error = exc[1]
        if error is None or isinstance(error, grpc.aio.AbortError):
            return False
        if isinstance(error, DomainError):
            await self._context.abort_with_status(rpc_status.to_status(error.to_status()))
        elif isinstance(error, Exception):
            log.error("unhandled error", exc_info=error, extra={"rpc_method": self._method})
            await self._context.abort_with_status(rpc_status.to_status(internal_status()))
        return False


async def _abort_at_deadline(context: Context) -> None:
    try:
        await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded")
    except grpc.aio.AbortError:
        raise
    except Exception:
        # The call had already ended (the client's deadline passed at the same moment):
        # there is no status left to send, so end the handler as cancelled.
        raise asyncio.CancelledError from None


class ServerDeadline(ServerConcern):
    """Bounds the handler by the caller's deadline and records it for outgoing calls."""

    def around(self, method: str, request: Any, context: Context) -> Around:
        return _Bounded(context)


class _Bounded(Around):
    __slots__ = ("_context", "_timeout", "_token")

    def __init__(self, context: Context) -> None:
        self._context = context

    async def __aenter__(self) -> None:
        remaining = self._context.time_remaining()
        self._token = deadline.set_deadline(remaining)
        self._timeout = None if remaining is None else asyncio.timeout(remaining)
        if self._timeout is not None:
            await self._timeout.__aenter__()

    async def __aexit__(self, *exc: Any) -> bool:
        try:
            if self._timeout is not None:
                try:
                    await self._timeout.__aexit__(*exc)
                except TimeoutError:
                    if self._timeout.expired():
                        await _abort_at_deadline(self._context)
                    raise
        finally:
            deadline.reset_deadline(self._token)
        return False


class ServerAuth(ServerConcern):
    """Verifies the caller's bearer token (passed on by the gateway) and applies the
    access the contract declares for the method (`(shop.common.v1.access)`): service
    methods take only the mesh's service certificates, signed-in ones a valid token,
    admin ones the admin role. The handler then checks ownership against the data."""

    def __init__(self, verifier: auth.Verifier, *, services_only_internal: bool) -> None:
        self._verifier = verifier
        self._services_only = services_only_internal

    def _caller(self, method: str, context: Context) -> auth.Caller | None:
        if not method.startswith("/shop."):
            return None  # health and reflection: the platform's own, open to any peer
        level = access.access_of(method)
        if level == access.SERVICE:
            # For other services only: a service certificate, not the gateway's.
            if self._services_only:
                role = tls.role_of(context.auth_context())
                if role != tls.SERVICE:
                    raise PermissionDenied(
                        "internal RPCs are for the mesh's services only", "SERVICE_ONLY"
                    )
            return None
        values = [
            value.decode("latin-1") if isinstance(value, bytes) else value
            for key, value in context.invocation_metadata() or ()
            if key == "authorization"
        ]
        token = auth.bearer_token(auth.single_authorization(values))
        caller = None if token is None else self._verifier.verify(token)
        if level != access.PUBLIC and caller is None:
            raise Unauthenticated("this call needs a bearer token", "TOKEN_MISSING")
        if level == access.ADMIN and caller is not None and not caller.is_admin:
            raise PermissionDenied("this needs the admin role", "ADMIN_ONLY")
        return caller

    def around(self, method: str, request: Any, context: Context) -> Around:
        return _Authenticated(self, method, context)


class _Authenticated(Around):
    __slots__ = ("_auth", "_context", "_method", "_token")

    def __init__(self, concern: ServerAuth, method: str, context: Context) -> None:
        self._auth = concern
        self._method = method
        self._context = context

    async def __aenter__(self) -> None:
        self._token: Token[auth.Caller | None] = auth.set_caller(
            self._auth._caller(self._method, self._context)
        )

    async def __aexit__(self, *exc: Any) -> bool:
        auth.reset_caller(self._token)
        return False


class ServerValidation(ServerConcern):
    """Checks every request against its protovalidate rules before any handler runs."""

    def around(self, method: str, request: Any, context: Context) -> Around:
        return _Validated(request)


class _Validated(Around):
    __slots__ = ("_request",)

    def __init__(self, request: Any) -> None:
        self._request = request

    async def __aenter__(self) -> None:
        validation.validate(self._request)
