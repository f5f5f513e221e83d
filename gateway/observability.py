"""The gateway's request metrics (Prometheus, served on METRICS_PORT, never on the
public port) and its request spans.

Requests are counted by route, never by raw path: a Connect, gRPC or gRPC-Web
call by its procedure (`/shop.user.v1.UserService/GetUser`), a REST call by the
matched rule (`GET /v1/users/{id}`), anything else as `other`, so that ids and
made-up paths cannot grow the number of series. Each is counted with the RPC code
it ended with (`code`, the same names the services use) whatever the protocol,
its protocol, and its HTTP status (which for gRPC is 200 whatever the outcome).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from opentelemetry import propagate, trace
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware, asgi_getter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.trace import SpanKind
from prometheus_client import Counter, Histogram
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.edge import Exchange
from services.common.metrics import LATENCY_BUCKETS, ServedRegistry

# Finds the REST rule a method and path match (`GET /v1/users/{id}`), or None.
RestMatcher = Callable[[str, str], str | None]


class GatewayMetrics(ServedRegistry):
    """Requests and their duration by route, served on their own port."""

    def __init__(self, procedures: Iterable[str], rest_route: RestMatcher) -> None:
        super().__init__()
        self.procedures = frozenset(procedures)
        self._rest_route = rest_route
        self.requests = Counter(
            "gateway_requests",
            "Requests answered, by route, protocol, RPC code and HTTP status.",
            ["route", "protocol", "code", "status"],
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
        path = str(scope["path"])
        if path in self.procedures:
            return path
        return self._rest_route(str(scope.get("method", "")), path) or "other"

    def observe(self, exchange: Exchange, seconds: float) -> None:
        self.requests.labels(
            exchange.route, exchange.protocol, exchange.code, str(exchange.http_status)
        ).inc()
        self.duration.labels(exchange.route).observe(seconds)


def traced(app: ASGIApp) -> ASGIApp:
    """One server span per request, child of an incoming traceparent. When spans are
    recorded, OpenTelemetry's ASGI middleware makes it, with its HTTP attributes (and
    without the per-message receive/send spans). When the sampler records nothing (the
    default when nothing is exported, services/common/telemetry.py), all a span does is
    carry the trace on, to the logs and the services: `SpanIds` does that much for a
    fraction of the middleware's cost (about a tenth of the gateway's CPU per request)."""
    if getattr(trace.get_tracer_provider(), "sampler", None) is ALWAYS_OFF:
        return SpanIds(app)
    return OpenTelemetryMiddleware(app, exclude_spans=["receive", "send"])


class SpanIds:
    """ASGI middleware: the request's trace continued from its propagation headers (as
    the configured propagators read them), in a span that is current while it is served."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._tracer = trace.get_tracer("shop.gateway")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # Read as OpenTelemetry's middleware reads them (every value of a repeated header).
        context = propagate.extract(scope, getter=asgi_getter)  # type: ignore[misc]
        with self._tracer.start_as_current_span(
            str(scope["method"]), context=context, kind=SpanKind.SERVER
        ):
            await self.app(scope, receive, send)
