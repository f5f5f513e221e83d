"""Server interceptors: the single place where every RPC gets the platform's behaviour.

Order (outermost first): tracing (OpenTelemetry) -> access log -> errors ->
deadline -> authentication -> validation -> the servicer. Each concern is written
once, as an async context manager around the call (`around`), and `ServerConcern`
applies it to unary and server-streaming methods alike.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeAlias

import grpc
from grpc_status import rpc_status

from services.common import access, auth, deadline, tls, validation
from services.common.errors import DomainError, PermissionDenied, Unauthenticated, internal_status
from services.common.metrics import Metrics

log = logging.getLogger("shop.rpc")

if TYPE_CHECKING:
    Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]
else:
    Context = grpc.aio.ServicerContext

Unary = Callable[[Any, Context], Awaitable[Any]]
Streaming = Callable[[Any, Context], AsyncIterator[Any]]


class ServerConcern(grpc.aio.ServerInterceptor):
    """One concern around every unary and server-streaming call: subclasses write
    `around`, once; other call kinds pass through untouched."""

    def around(
        self, method: str, request: Any, context: Context
    ) -> AbstractAsyncContextManager[None]:
        raise NotImplementedError

    def _unary(self, method: str, behaviour: Unary) -> Unary:
        async def wrapped(request: Any, context: Context) -> Any:
            async with self.around(method, request, context):
                return await behaviour(request, context)

        return wrapped

    def _stream(self, method: str, behaviour: Streaming) -> Streaming:
        async def wrapped(request: Any, context: Context) -> AsyncIterator[Any]:
            async with self.around(method, request, context):
                async for response in behaviour(request, context):
                    yield response

        return wrapped

    async def intercept_service(
        self, continuation: Callable[[Any], Awaitable[Any]], details: grpc.HandlerCallDetails
    ) -> Any:
        handler = await continuation(details)
        if handler is None:
            return None
        method = details.method
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(method, handler.unary_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._stream(method, handler.unary_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler


def _code_name(context: Context, error: BaseException | None) -> str:
    # A cancelled call's context may already be torn down: don't touch it.
    if isinstance(error, asyncio.CancelledError | GeneratorExit):
        return "CANCELLED"
    code = context.code()
    if code is None:
        return "OK" if error is None else "UNKNOWN"
    return code.name if isinstance(code, grpc.StatusCode) else str(code)


class ServerAccessLog(ServerConcern):
    """Per RPC, the request metrics and one JSON line: method, status code, duration,
    peer (trace ids via the log filter)."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    @asynccontextmanager
    async def around(self, method: str, request: Any, context: Context) -> AsyncIterator[None]:
        started = time.perf_counter()
        peer = context.peer()  # read while the call is alive
        error: BaseException | None = None
        try:
            yield
        except BaseException as exc:
            error = exc
            raise
        finally:
            code = _code_name(context, error)
            seconds = time.perf_counter() - started
            self._metrics.observe_rpc(method, code, seconds)
            log.info(
                "rpc",
                extra={
                    "rpc_method": method,
                    "grpc_code": code,
                    "duration_ms": round(seconds * 1000, 3),
                    "peer": peer,
                },
            )


class ServerErrors(ServerConcern):
    """Domain errors become their status with details; anything unexpected becomes INTERNAL."""

    @asynccontextmanager
    async def around(self, method: str, request: Any, context: Context) -> AsyncIterator[None]:
        try:
            yield
        except grpc.aio.AbortError:
            raise
        except DomainError as error:
            await context.abort_with_status(rpc_status.to_status(error.to_status()))
        except Exception:
            log.exception("unhandled error", extra={"rpc_method": method})
            await context.abort_with_status(rpc_status.to_status(internal_status()))


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

    @asynccontextmanager
    async def around(self, method: str, request: Any, context: Context) -> AsyncIterator[None]:
        remaining = context.time_remaining()
        token = deadline.set_deadline(remaining)
        try:
            async with asyncio.timeout(remaining) as bound:
                yield
        except TimeoutError:
            if bound.expired():
                await _abort_at_deadline(context)
            raise
        finally:
            deadline.reset_deadline(token)


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

    @asynccontextmanager
    async def around(self, method: str, request: Any, context: Context) -> AsyncIterator[None]:
        token = auth.set_caller(self._caller(method, context))
        try:
            yield
        finally:
            auth.reset_caller(token)


class ServerValidation(ServerConcern):
    """Checks every request against its protovalidate rules before any handler runs."""

    @asynccontextmanager
    async def around(self, method: str, request: Any, context: Context) -> AsyncIterator[None]:
        validation.validate(request)
        yield
