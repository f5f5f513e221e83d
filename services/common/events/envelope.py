"""The transport-neutral form of one event."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Event:
    event_id: str
    # Also the NATS subject: "shop.order.created".
    subject: str
    # The serialized event message (shop.order.v1.OrderCreated, ...).
    payload: bytes
    # W3C trace context and the like.
    headers: Mapping[str, str] = field(default_factory=dict)
    # Position in the producer's feed (embedded transport); 0 when unknown.
    sequence: int = 0
