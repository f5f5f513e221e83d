"""Server interceptors: the single place where every RPC gets the platform's behaviour.

Order (outermost first): tracing (OpenTelemetry) -> access log -> errors ->
deadline -> authentication -> validation -> the servicer. Each concern is written
once, as an async context manager around the call (`ServerConcern.around`), and
`ServerPipeline` applies them all to unary and server-streaming methods alike.
"""

from __future__ import annotations

import asyncio
import logging
import time
import types
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeAlias

import grpc
from google.protobuf.descriptor import ServiceDescriptor
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


class ServerConcern:
    """One concern around every call: subclasses write `around`, once."""

    def around(
        self, method: str, request: Any, context: Context
    ) -> AbstractAsyncContextManager[None]:
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

    async def _enter(
        self, stack: AsyncExitStack, method: str, request: Any, context: Context
    ) -> None:
        for concern in self._concerns:
            await stack.enter_async_context(concern.around(method, request, context))

    def _unary(self, method: str, behaviour: Unary) -> Unary:
        async def wrapped(request: Any, context: Context) -> Any:
            async with AsyncExitStack() as stack:
                await self._enter(stack, method, request, context)
                return await behaviour(request, context)

        return wrapped

    def _stream(self, method: str, behaviour: Streaming) -> Streaming:
        async def wrapped(request: Any, context: Context) -> AsyncIterator[Any]:
            async with AsyncExitStack() as stack:
                await self._enter(stack, method, request, context)
                async for response in behaviour(request, context):
                    yield response

        return wrapped


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
