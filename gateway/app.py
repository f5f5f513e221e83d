"""The gateway's ASGI application: Connect/gRPC-Web/gRPC per service path, and health."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Mount, Route

from gateway.config import GatewayConfig
from gateway.connect import connect_apps
from gateway.registry import public_services
from gateway.rest import RestRouter
from gateway.upstream import Upstreams

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
    upstreams = Upstreams(config.upstreams)
    services = public_services()
    routes: list[BaseRoute] = [Route("/healthz", _healthz)]
    routes += [Mount(app.path, app=app) for app in connect_apps(services, upstreams, config)]
    rest = RestRouter(services, upstreams, config)
    prefixes = sorted({r.template.template.split("/")[1] for r in rest.routes})
    methods = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
    routes += [
        Route(f"/{prefix}/{{rest:path}}", rest.handle, methods=methods) for prefix in prefixes
    ]

    @asynccontextmanager
    async def lifespan(_: Any) -> AsyncIterator[None]:
        yield
        await upstreams.close()

    middleware = []
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
    return Starlette(routes=routes, middleware=middleware, lifespan=lifespan)


async def _healthz(_: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})
