"""Trace context across the event transport: a producer span when the relay publishes,
a consumer span when a consumer applies, both in the trace of the request that made
the event. The context travels in the event's headers (W3C traceparent), which the
outbox stores with the event and both transports (embedded feed, NATS) carry.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime

from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind

from services.common.events.envelope import Event
from services.common.times import as_utc

# When the event was committed (ISO 8601), for the consumers' lag.
CREATE_TIME = "shop-create-time"

tracer = trace.get_tracer("shop.events")


def _attributes(event: Event) -> dict[str, str]:
    return {
        "messaging.message.id": event.event_id,
        "messaging.destination.name": event.subject,
    }


@contextmanager
def publishing(event: Event) -> Iterator[Event]:
    """A PRODUCER span for the duration of the publish; yields the event carrying it."""
    with tracer.start_as_current_span(
        f"{event.subject} publish",
        context=propagate.extract(event.headers),
        kind=SpanKind.PRODUCER,
        attributes=_attributes(event),
    ):
        headers = dict(event.headers)
        propagate.inject(headers)
        yield replace(event, headers=headers)


@contextmanager
def consuming(event: Event, consumer: str) -> Iterator[None]:
    """A CONSUMER span, child of the publisher's (or the request's) span."""
    with tracer.start_as_current_span(
        f"{event.subject} process",
        context=propagate.extract(event.headers),
        kind=SpanKind.CONSUMER,
        attributes={**_attributes(event), "messaging.consumer.group.name": consumer},
    ):
        yield


def age_seconds(event: Event) -> float | None:
    """Seconds since the event was committed, when its headers say."""
    raw = event.headers.get(CREATE_TIME)
    if not raw:
        return None
    created = as_utc(datetime.fromisoformat(raw))
    return max(0.0, (datetime.now(UTC) - created).total_seconds())
