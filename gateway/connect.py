"""Connect, gRPC-Web and gRPC: the generated connectrpc applications, each served by a
forwarder built from the service descriptor (no handler written per RPC)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from connectrpc.compat import google_protobuf_binary_codec
from connectrpc.errors import ConnectError
from connectrpc.request import RequestContext
from google.protobuf.descriptor import MethodDescriptor
from google.rpc import code_pb2

from gateway import edge
from gateway.auth import require_token
from gateway.config import GatewayConfig
from gateway.errors import connect_error, internal_status, reason_of, retry_after_of, status_of
from gateway.protojson import CheckedJSONCodec
from gateway.registry import PublicService, procedure
from gateway.upstream import CallOptions, Upstreams, call_options, stream
from services.common.errors import DomainError

log = logging.getLogger("shop.gateway")


class Forwarder:
    """Stands in for a service implementation: `forwarder.create_user(request, ctx)`
    forwards CreateUser. Methods are looked up by name, so new RPCs need nothing here."""

    def __init__(self, service: PublicService, upstreams: Upstreams, config: GatewayConfig) -> None:
        self._config = config
        self._handlers: dict[str, Callable[..., Any]] = {}
        for method in service.descriptor.methods:
            call = upstreams.method(service.upstream, method)
            key = method.name.lower()
            self._handlers[key] = (
                self._server_stream(method, call)
                if method.server_streaming
                else self._unary(method, call)
            )

    def __getattr__(self, name: str) -> Callable[..., Any]:
        try:
            return self._handlers[name.replace("_", "").lower()]
        except KeyError:
            raise AttributeError(name) from None

    def _options(self, ctx: RequestContext[Any, Any], streaming: bool) -> CallOptions:
        timeout = ctx.timeout_ms / 1000 if ctx.timeout_ms is not None else None
        if timeout is None and not streaming:
            timeout = self._config.default_timeout
        return call_options(
            dict(ctx.request_headers.items()), timeout, self._config.forward_headers
        )

    def _unary(self, method: MethodDescriptor, call: Any) -> Callable[..., Any]:
        path = procedure(method)

        async def forward(request: Any, ctx: RequestContext[Any, Any]) -> Any:
            _signed_in(path, ctx)
            options = self._options(ctx, streaming=False)
            return await call(request, timeout=options.timeout, metadata=options.metadata)

        return forward

    def _server_stream(self, method: MethodDescriptor, call: Any) -> Callable[..., Any]:
        path = procedure(method)

        async def forward(request: Any, ctx: RequestContext[Any, Any]) -> AsyncIterator[Any]:
            _signed_in(path, ctx)
            options = self._options(ctx, streaming=True)
            responses = call(request, timeout=options.timeout, metadata=options.metadata)
            async for response in stream(responses):
                yield response

        return forward


def _signed_in(procedure: str, ctx: RequestContext[Any, Any]) -> None:
    try:
        require_token(procedure, ctx.request_headers.get("authorization"))
    except DomainError as error:
        edge.note(error.code.value[0], error.reason)
        raise connect_error(error.to_status()) from None


def as_connect_error(error: Exception, ctx: RequestContext[Any, Any]) -> ConnectError:
    """A service's status as it was sent; anything unexpected as INTERNAL, text withheld."""
    if isinstance(error, ConnectError):
        edge.note(code_pb2.Code.Value(error.code.name.replace("CANCELED", "CANCELLED")))
        return error
    if isinstance(error, grpc.aio.AioRpcError):
        status = status_of(error)
    else:
        log.error("gateway error", exc_info=error, extra={"rpc_method": ctx.method.name})
        status = internal_status()
    edge.note(status.code, reason_of(status))
    retry = retry_after_of(status)
    if retry:
        ctx.response_headers["retry-after"] = retry
    return connect_error(status)


class ConnectErrors:
    """The one place errors are translated, for unary and streaming methods alike."""

    async def intercept_unary(
        self, call_next: Any, request: Any, ctx: RequestContext[Any, Any]
    ) -> Any:
        try:
            return await call_next(request, ctx)
        except Exception as error:
            raise as_connect_error(error, ctx) from None

    async def intercept_server_stream(
        self, call_next: Any, request: Any, ctx: RequestContext[Any, Any]
    ) -> AsyncIterator[Any]:
        try:
            async for response in call_next(request, ctx):
                yield response
        except Exception as error:
            raise as_connect_error(error, ctx) from None


def connect_apps(
    services: list[PublicService], upstreams: Upstreams, config: GatewayConfig
) -> list[Any]:
    """One connectrpc ASGI application per public service; each has `.path` to mount at."""
    return [
        service.asgi_application(
            Forwarder(service, upstreams, config),
            interceptors=[ConnectErrors()],
            read_max_bytes=config.max_body_bytes,
            # Unknown JSON fields are an error, as they are for the services' own clients.
            codecs=[google_protobuf_binary_codec(), CheckedJSONCodec()],
        )
        for service in services
    ]
