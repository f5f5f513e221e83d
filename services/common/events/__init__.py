"""Events between services: a transactional outbox on the producer side, idempotent
consumers on the other, and two transports behind one small interface:

- embedded (no BROKER_URL): consumers follow the producer's outbox over a gRPC
  feed, resuming from a cursor they store with their own writes;
- NATS JetStream (BROKER_URL=nats://...): the relay publishes to a stream,
  consumers share a durable pull consumer and ack after their commit.

Delivery is at-least-once either way; consumers deduplicate by event id.
"""

from services.common.events.envelope import Event

__all__ = ["Event"]
