"""The gateway's ASGI application: Connect/gRPC-Web/gRPC per service path, and health."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from google.rpc import code_pb2, status_pb2
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway import console, docs, edge, openapi, reflection
from gateway.auth import Authentication
from gateway.config import GatewayConfig
from gateway.connect import connect_apps
from gateway.edge import Edge
from gateway.observability import GatewayMetrics, traced
from gateway.ratelimit import RateLimit
from gateway.refusal import unknown_method
from gateway.registry import procedure, public_services
from gateway.rest import RestRouter, status_response
from gateway.upstream import Upstreams
from services.common.auth import Verifier, public_jwks

CONNECT_HEADERS = (
    "Connect-Protocol-Version",
    "Connect-Timeout-Ms",
    "Connect-Accept-Encoding",
    "Connect-Content-Encoding",
    "Grpc-Timeout",
    "Grpc-Accept-Encoding",
    "Grpc-Encoding",
    "X-Grpc-Web",
    "X-User-Agent",
    "X-Request-Id",
    "Traceparent",
    "Tracestate",
    "Content-Type",
    "Authorization",
)
EXPOSED_HEADERS = (
    "Grpc-Status",
    "Grpc-Message",
    "Grpc-Status-Details-Bin",
    "Grpc-Encoding",
    "Connect-Content-Encoding",
    "X-Request-Id",
)


def create_app(config: GatewayConfig | None = None) -> Starlette:
    config = config or GatewayConfig.from_env()
    upstreams = Upstreams(config.upstreams, config.breaker, config.tls)
    services = public_services()
    rest = RestRouter(services, upstreams, config)
    metrics = GatewayMetrics(
        (procedure(method) for service in services for method in service.descriptor.methods),
        rest.route_label,
    )
    routes: list[BaseRoute] = [
        Route("/healthz", _healthz),
        Route("/.well-known/jwks.json", published_keys_route(config)),
    ]
    # The public services, and gRPC server reflection listing them (for buf curl, grpcurl),
    # reached by `Procedures` below rather than by a route each.
    apps = [*connect_apps(services, upstreams, config), *reflection.reflection_apps(services)]
    spec = openapi.document(rest.routes)

    async def openapi_json(_: Request) -> JSONResponse:
        return JSONResponse(spec)

    routes += [
        Route("/openapi.json", openapi_json),
        Route("/docs", docs.page),
        Route("/docs/init.js", docs.init_script),
        Mount(docs.ASSETS, app=docs.assets),
    ]
    prefixes = sorted({r.template.template.split("/")[1] for r in rest.routes})
    methods = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
    routes += [
        Route(f"/{prefix}/{{rest:path}}", rest.handle, methods=methods) for prefix in prefixes
    ]
    routes += console.routes()  # the browser console: `/` and its `/assets/`

    @asynccontextmanager
    async def lifespan(_: Any) -> AsyncIterator[None]:
        yield
        await upstreams.close()

    streaming = [
        procedure(method)
        for service in services
        for method in service.descriptor.methods
        if method.server_streaming
    ]
    # Outermost first: the request span; the edge (request id, code, access log, metrics,
    # last-resort answers); CORS, so refusals carry its headers too; the token; limits.
    middleware = [
        Middleware(traced),
        Middleware(Edge, route_of=metrics.route_of, observe=metrics.observe),
    ]
    if config.cors_origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=list(config.cors_origins),
                allow_methods=["GET", "POST", "PATCH", "DELETE", "OPTIONS"],
                allow_headers=list(CONNECT_HEADERS),
                expose_headers=list(EXPOSED_HEADERS),
                max_age=7200,
            )
        )
    middleware += [
        Middleware(Authentication, verifier=Verifier(config.auth)),
        Middleware(
            RateLimit,
            rate=config.rate_limit,
            burst=config.rate_burst,
            max_streams=config.max_streams_per_client,
            streaming_paths=streaming,
        ),
        Middleware(Procedures, services={app.path: app for app in apps}),
    ]
    app = Starlette(
        routes=routes,
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers={404: _not_found, 405: _not_allowed},
    )
    app.state.metrics = metrics
    return app


class Procedures:
    """ASGI middleware, the innermost: a call to `/<package>.<Service>/<Method>` goes
    straight to that service's Connect application, found by one dictionary look-up,
    instead of through Starlette's exception handling and a match against every route
    (a few percent of the gateway's CPU per call, by py-spy). Any other path goes on to
    the routes."""

    def __init__(self, app: ASGIApp, services: dict[str, ASGIApp]) -> None:
        self.app = app
        self._services = services

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = str(scope["path"])
            service = self._services.get(path[: path.rfind("/")])
            if service is not None:
                await service(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def _not_found(request: Request, _: Exception) -> Response:
    """Every answer is JSON, even for paths no route matches; a Connect caller gets the
    Connect error for a method the gateway does not serve (gRPC callers get
    grpc-status 12 from the edge)."""
    if edge.protocol_of(request.scope) == edge.CONNECT:
        return _UnknownMethod()
    message = f"no route for {request.method} {request.url.path}"
    return status_response(status_pb2.Status(code=code_pb2.NOT_FOUND, message=message))


class _UnknownMethod(Response):
    def __init__(self) -> None:
        super().__init__()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await unknown_method(scope, send)


async def _not_allowed(request: Request, _: Exception) -> Response:
    message = f"{request.method} is not allowed for {request.url.path}"
    response = status_response(status_pb2.Status(code=code_pb2.UNIMPLEMENTED, message=message))
    response.status_code = 405
    return response


# Verifiers may keep the keys this long; a rotation publishes the new key beside the old
# one first (README, Security), so a cached set still verifies.
JWKS_MAX_AGE = 300


def published_keys_route(config: GatewayConfig) -> Callable[[Request], Awaitable[Response]]:
    """The public keys the mesh's tokens are verified with, for other parties (an API
    that accepts the mesh's tokens, a client that checks them). Read from the key file at
    each request, so a rotation shows at once; with JWT_JWKS_URL the identity provider
    publishes its own."""

    async def published_keys(_: Request) -> Response:
        if config.auth.jwks_url:
            message = f"the keys are published by the identity provider: {config.auth.jwks_url}"
            return status_response(status_pb2.Status(code=code_pb2.NOT_FOUND, message=message))
        return JSONResponse(
            public_jwks(config.auth.jwks_file),
            headers={"cache-control": f"public, max-age={JWKS_MAX_AGE}"},
        )

    return published_keys


async def _healthz(_: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})
