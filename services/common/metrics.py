"""Prometheus metrics of one process part (a service or the gateway), served on /metrics.

Each service has its own registry rather than the process-wide default, so that
several services sharing one process (as in the tests) each report only their own
calls. Gauges that describe state (outbox backlog, consumer lag, open streams,
database pool) are read when scraped, from values the service keeps up to date.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    start_http_server,
)
from prometheus_client.exposition import generate_latest

# Seconds: from sub-millisecond reads to calls that run into a 10 s deadline.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class ServedRegistry:
    """A registry of its own, served on /metrics on a port of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._server: MetricsServer | None = None

    def serve(self, host: str, port: int) -> int:
        """Serves /metrics over HTTP from a thread; returns the port (port 0 picks one)."""
        self._server = MetricsServer(self.registry, host, port)
        return self._server.port

    def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()


class Metrics(ServedRegistry):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service
        self.rpc_requests = Counter(
            "rpc_server_requests",
            "RPCs handled, by method and gRPC status code.",
            ["method", "code"],
            registry=self.registry,
        )
        self.rpc_duration = Histogram(
            "rpc_server_duration_seconds",
            "Time to handle an RPC (for a stream, how long it was open), by method.",
            ["method"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )

    def observe_rpc(self, method: str, code: str, seconds: float) -> None:
        name = method.lstrip("/")
        self.rpc_requests.labels(name, code).inc()
        self.rpc_duration.labels(name).observe(seconds)

    def gauge(self, name: str, documentation: str, read: Callable[[], float]) -> None:
        """A gauge whose value is `read()` at scrape time (keep `read` cheap and thread-safe)."""
        Gauge(name, documentation, registry=self.registry).set_function(read)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class MetricsServer:
    """/metrics of one registry over HTTP, on a port of its own, from a thread."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int) -> None:
        self._server, self._thread = start_http_server(port, addr=host, registry=registry)
        self.port = int(self._server.server_port)

    def close(self) -> None:
        """Stops serving, without waiting: shutdown() waits up to the server's 0.5 s poll."""
        server = self._server

        def stop() -> None:
            server.shutdown()
            server.server_close()

        threading.Thread(target=stop, name="metrics-shutdown", daemon=True).start()
