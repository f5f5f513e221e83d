"""OpenTelemetry tracing set-up: a tracer provider named after the service.

Spans are exported only when the standard OTEL_* variables ask for it
(OTEL_TRACES_EXPORTER=console, or OTLP when an OTLP exporter package is
installed and OTEL_EXPORTER_OTLP_ENDPOINT is set); otherwise they are made for
the ids in the logs and dropped, which costs little.
"""

from __future__ import annotations

import logging
import os

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

_configured = False


def configure(service: str) -> None:
    global _configured
    if _configured:
        return
    _configured = True
    resource = Resource.create(
        {
            "service.name": os.environ.get("OTEL_SERVICE_NAME", f"shop-{service}"),
            "service.namespace": "shop",
        }
    )
    provider = TracerProvider(resource=resource)
    if os.environ.get("OTEL_TRACES_EXPORTER", "").lower() == "console":
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    elif os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # type: ignore[import-not-found]
                OTLPSpanExporter,
            )
        except ImportError:
            logging.getLogger("shop.telemetry").warning(
                "OTEL_EXPORTER_OTLP_ENDPOINT is set but opentelemetry-exporter-otlp is not "
                "installed: spans are not exported"
            )
        else:
            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
