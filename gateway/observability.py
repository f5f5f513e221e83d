"""The gateway's request metrics (Prometheus, on GET /metrics) and its request spans.

Requests are counted by route, never by raw path: a Connect, gRPC or gRPC-Web
call by its procedure (`/shop.user.v1.UserService/GetUser`), a REST call by the
matched rule (`GET /v1/users/{id}`), anything else as `other`, so that ids and
made-up paths cannot grow the number of series.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.common.metrics import LATENCY_BUCKETS

# Set in the ASGI scope by the REST router once a rule matched.
ROUTE_KEY = "shop.route"


class GatewayMetrics:
    """Requests and their duration by route and HTTP status, and the /metrics endpoint."""

    def __init__(self, procedures: Iterable[str]) -> None:
        self.procedures = frozenset(procedures)
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "gateway_requests",
            "HTTP requests answered, by route and HTTP status.",
            ["route", "status"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "gateway_request_duration_seconds",
            "Time to answer (for a stream, how long it was open), by route.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )

    def route_of(self, scope: Scope) -> str:
        path = scope["path"]
        if path in self.procedures:
            return str(path)
        return str(scope.get(ROUTE_KEY, "other"))

    async def endpoint(self, _: Request) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)


class RequestMetrics:
    """ASGI middleware feeding GatewayMetrics."""

    def __init__(self, app: ASGIApp, metrics: GatewayMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            route = self.metrics.route_of(scope)
            self.metrics.requests.labels(route, str(status)).inc()
            self.metrics.duration.labels(route).observe(time.perf_counter() - started)


def traced(app: ASGIApp) -> ASGIApp:
    """One server span per request (child of an incoming traceparent), without the
    per-message receive/send spans."""
    return OpenTelemetryMiddleware(app, exclude_spans=["receive", "send"])
