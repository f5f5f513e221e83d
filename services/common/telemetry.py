"""OpenTelemetry tracing: the provider of each process, and the instrumented parts.

Spans are exported as the standard variables ask: OTLP (gRPC) when
OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is set, the
console with OTEL_TRACES_EXPORTER=console. When nothing is exported, the default
sampler records nothing: spans still carry trace and span ids (for the logs and
for propagation to the next hop), but no attributes are collected and no
processor runs, so tracing costs next to nothing. OTEL_TRACES_SAMPLER still
overrides that choice.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.instrumentation.sqlalchemy.engine import EngineTracer
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

log = logging.getLogger("shop.telemetry")

_configured = False


def exporting() -> SpanProcessor | None:
    """The span processor the OTEL_* variables ask for, or None when nothing is exported."""
    chosen = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if chosen == "none":
        return None
    if chosen == "console":
        return BatchSpanProcessor(ConsoleSpanExporter())
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    if chosen == "otlp" or endpoint:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return BatchSpanProcessor(OTLPSpanExporter())
    return None


def configure(service: str) -> None:
    """Sets the process's tracer provider, named `shop-<service>`; once per process."""
    global _configured
    if _configured:
        return
    _configured = True
    # OTEL_RESOURCE_ATTRIBUTES adds to these; OTEL_SERVICE_NAME replaces the name.
    resource = Resource.create(
        {
            "service.name": os.environ.get("OTEL_SERVICE_NAME", f"shop-{service}"),
            "service.namespace": "shop",
            "service.version": _version(),
        }
    )
    processor = exporting()
    sampler: Any = None
    if processor is None and not os.environ.get("OTEL_TRACES_SAMPLER"):
        sampler = ALWAYS_OFF
    provider = TracerProvider(resource=resource, sampler=sampler)
    if processor is not None:
        provider.add_span_processor(processor)
        log.info("exporting spans", extra={"processor": type(processor).__name__})
    trace.set_tracer_provider(provider)


def trace_database(engine: Any) -> None:
    """Spans for every statement on this (sync) engine, children of the current span."""
    meter = metrics.get_meter("opentelemetry.instrumentation.sqlalchemy")
    usage = meter.create_up_down_counter("db.client.connections.usage", unit="connections")
    tracer = trace.get_tracer("opentelemetry.instrumentation.sqlalchemy")
    EngineTracer(tracer, engine, usage)  # type: ignore[no-untyped-call]


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("shop-mesh")
    except PackageNotFoundError:
        return "0"
