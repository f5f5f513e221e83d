"""The gateway's ASGI application: Connect/gRPC-Web/gRPC per service path, and health."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from google.rpc import code_pb2, status_pb2
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from gateway import docs, openapi
from gateway.auth import Authentication
from gateway.config import GatewayConfig
from gateway.connect import connect_apps
from gateway.observability import GatewayMetrics, RequestMetrics, traced
from gateway.ratelimit import RateLimit
from gateway.registry import procedure, public_services
from gateway.rest import RestRouter, status_response
from gateway.upstream import Upstreams
from services.common.auth import Verifier

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
    metrics = GatewayMetrics(
        procedure(method) for service in services for method in service.descriptor.methods
    )
    routes: list[BaseRoute] = [Route("/healthz", _healthz), Route("/metrics", metrics.endpoint)]
    routes += [Mount(app.path, app=app) for app in connect_apps(services, upstreams, config)]
    rest = RestRouter(services, upstreams, config)
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

    @asynccontextmanager
    async def lifespan(_: Any) -> AsyncIterator[None]:
        yield
        await upstreams.close()

    # Outermost first: the request span, then the metrics (which see CORS answers too).
    streaming = [
        procedure(method)
        for service in services
        for method in service.descriptor.methods
        if method.server_streaming
    ]
    middleware = [
        Middleware(traced),
        Middleware(RequestMetrics, metrics=metrics),
        Middleware(Authentication, verifier=Verifier(config.auth)),
        Middleware(
            RateLimit,
            rate=config.rate_limit,
            burst=config.rate_burst,
            max_streams=config.max_streams_per_client,
            streaming_paths=streaming,
        ),
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
    return Starlette(
        routes=routes,
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers={404: _not_found, 405: _not_allowed},
    )


async def _not_found(request: Request, _: Exception) -> Response:
    """Every answer is JSON, even for paths no route matches."""
    message = f"no route for {request.method} {request.url.path}"
    return status_response(status_pb2.Status(code=code_pb2.NOT_FOUND, message=message))


async def _not_allowed(request: Request, _: Exception) -> Response:
    message = f"{request.method} is not allowed for {request.url.path}"
    response = status_response(status_pb2.Status(code=code_pb2.UNIMPLEMENTED, message=message))
    response.status_code = 405
    return response


async def _healthz(_: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})
