"""NATS JetStream transport (nats-py): one stream for every event, durable consumers."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import nats
from nats.aio.client import Client
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, StreamConfig

from services.common.config import ServiceConfig
from services.common.events.consumer import Consumer
from services.common.events.envelope import Event

log = logging.getLogger("shop.nats")

MSG_ID = "Nats-Msg-Id"


@dataclass(frozen=True)
class Bus:
    """A connection and the names that keep this mesh's events apart from others'."""

    client: Client
    js: JetStreamContext
    stream: str
    prefix: str

    def subject(self, logical: str) -> str:
        return f"{self.prefix}.{logical}"

    def logical(self, subject: str) -> str:
        return subject.removeprefix(self.prefix + ".")


# JetStream keeps at most 5 copies of a stream.
MAX_REPLICAS = 5


def servers(url: str) -> list[str]:
    """BROKER_URL as nats-py's server pool: `nats://a:4222,nats://b:4222` lists the
    nodes of a cluster (nats-py takes a list; a comma-separated string would be read
    as one malformed URL)."""
    pool = [part.strip() for part in url.split(",") if part.strip()]
    if not pool:
        raise ValueError("no NATS server given")
    return pool


async def connect(url: str, *, stream: str, prefix: str, name: str, replicas: int = 1) -> Bus:
    """Connects (reconnecting for ever after, to any node of `url`) and makes sure the
    stream exists with `replicas` copies, so that it outlives the loss of a node."""
    if not 1 <= replicas <= MAX_REPLICAS:
        raise ValueError(f"EVENT_STREAM_REPLICAS must be 1..{MAX_REPLICAS}, not {replicas}")

    async def on_error(error: Exception) -> None:
        log.warning("nats connection error", extra={"error": type(error).__name__})

    async def on_disconnected() -> None:
        log.warning("nats disconnected; reconnecting")

    async def on_reconnected() -> None:
        log.info("nats reconnected")

    client = await nats.connect(
        servers(url),
        name=name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        connect_timeout=5,
        error_cb=on_error,
        disconnected_cb=on_disconnected,
        reconnected_cb=on_reconnected,
    )
    js = client.jetstream(timeout=5)
    config = StreamConfig(
        name=stream, subjects=[f"{prefix}.>"], duplicate_window=600.0, num_replicas=replicas
    )
    try:
        await js.add_stream(config)
    except nats.js.errors.BadRequestError:
        await js.update_stream(config)
    return Bus(client, js, stream, prefix)


async def connect_broker(config: ServiceConfig, client_name: str) -> Bus:
    """Connects to the service's BROKER_URL with its stream settings; the caller closes
    `bus.client` when it stops."""
    return await connect(
        config.broker_url,
        stream=config.event_stream,
        prefix=config.event_subject_prefix,
        name=client_name,
        replicas=config.event_stream_replicas,
    )


class NatsSink:
    """Publishes to JetStream; the event id doubles as the message id, so JetStream
    drops a republish of the same event (within the duplicate window)."""

    def __init__(self, bus: Bus) -> None:
        self._bus = bus

    async def publish(self, event: Event) -> None:
        await self._bus.js.publish(
            self._bus.subject(event.subject),
            event.payload,
            stream=self._bus.stream,
            headers={MSG_ID: event.event_id, **event.headers},
        )


class NatsSource:
    """A durable pull consumer shared by every replica of a service: JetStream hands
    each message to one of them (a work queue), and redelivers what is not acked."""

    def __init__(self, bus: Bus, consumer: Consumer, *, batch: int = 64) -> None:
        self._bus = bus
        self._consumer = consumer
        self._batch = batch

    async def run(self) -> None:
        bus = self._bus
        subscription = await bus.js.pull_subscribe(
            f"{bus.prefix}.>",
            durable=self._consumer.name,
            stream=bus.stream,
            config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, ack_wait=30, max_deliver=-1),
        )
        while True:
            try:
                messages = await subscription.fetch(self._batch, timeout=1)
            except NatsTimeout:
                continue
            except Exception as error:  # disconnected: the client reconnects by itself
                log.warning("fetch failed; retrying", extra={"error": type(error).__name__})
                await asyncio.sleep(0.5)
                continue
            for message in messages:
                headers = dict(message.headers or {})
                event = Event(
                    event_id=headers.pop(MSG_ID, ""),
                    subject=bus.logical(message.subject),
                    payload=message.data,
                    headers=headers,
                )
                try:
                    await self._consumer.apply(event)
                except Exception:
                    log.exception(
                        "event handler failed; redelivering", extra={"event_id": event.event_id}
                    )
                    await message.nak(delay=1)
                    continue
                await message.ack()
