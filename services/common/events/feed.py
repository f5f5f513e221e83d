"""The embedded event feed, both ends: a service's published outbox streamed in feed
order over gRPC (`Feed`, `OutboxReader`, `feed_message`), and a consumer following such
a stream from its stored position (`FeedFollower`, `event_of`). It carries the order
service's events when no broker is configured, and the user service's always; the feed
messages are each producer's Stream*EventsResponse (a sequence, headers, and the event in
a oneof `event`; where the contract has them, a `heartbeat` field and a request's
`heartbeat_interval`).

Heartbeats bound how stale a follower may be: a feed asked for them sends one as soon as
it has sent the events it had, then one every interval (each after the events it has),
carrying its head, and withholds them while an event committed more than
UNNUMBERED_GRACE ago still has no position (its relay stuck; the commit time is the
writing replica's clock, so the user service's replicas need clocks kept in step, as NTP
keeps them). A follower of such a feed trusts it only up to the head of a heartbeat, and
not at all once it has heard nothing for MISSED_HEARTBEATS intervals, even while the
connection stays up (a producer hung, or its relay stuck): after such a silence, only a
new heartbeat trusts it again."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, TypeVar, cast

import grpc
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message
from sqlalchemy import Table, bindparam, func, select

from services.common.db import Database, loaded
from services.common.events.consumer import Consumer
from services.common.events.envelope import Event
from services.common.events.outbox import Signal
from services.common.times import as_utc, utcnow
from shop.common.v1 import feed_pb2

log = logging.getLogger("shop.feed")

# How many events one read of the feed takes.
FEED_BATCH = 200
# How long a caught-up stream waits before looking again (for another replica's relay).
IDLE_POLL = 0.5
# What an event this build does not know is applied as: recorded, and nothing done.
UNKNOWN_SUBJECT = "unknown"
# The header the feed opens with: the position of the last event published when it
# opened. A follower that has applied up to it has caught up.
HEAD = "x-feed-head"
# The header a feed asked for heartbeats opens with too: their interval, in seconds.
HEARTBEAT = "x-feed-heartbeat"
# A feed withholds its heartbeats while an event committed longer ago than this still has
# no position (the relay numbers a commit's events within milliseconds).
UNNUMBERED_GRACE = 2.0
# A follower that heard nothing from a feed sending heartbeats for this many intervals
# stops trusting it, and after this many more reopens it (on another replica, when the
# channel has several: one that hangs with its connection up is left behind).
MISSED_HEARTBEATS = 3
REOPEN_AFTER_MISSED = 10


@dataclass(frozen=True)
class Heartbeat:
    """What a feed asked for heartbeats sends after its events, every interval: its head
    then."""

    head: int


FeedMessage = TypeVar("FeedMessage", bound=Message)
Result = TypeVar("Result")


def subjects(feed_message: type[Message]) -> dict[str, str]:
    """Event message type -> logical subject, from a feed message's `event` oneof: the
    field's name with '_' read as '.' ('order_created' -> 'order.created'), so producer
    and consumers derive it from the contract and share no constant."""
    fields = feed_message.DESCRIPTOR.oneofs_by_name["event"].fields
    return {
        field.message_type.full_name: field.name.replace("_", ".")
        for field in fields
        if field.message_type is not None
    }


def outbox_event(message: Any, subjects_by_type: dict[str, str]) -> Event:
    """An event message (with its `event_id`) as the outbox stores it, under the subject
    the feed message names it by (`subjects`)."""
    return Event(
        event_id=message.event_id,
        subject=subjects_by_type[message.DESCRIPTOR.full_name],
        payload=message.SerializeToString(),
    )


class PublishedEvents(Protocol):
    async def published_after(self, position: int, limit: int) -> Sequence[Event]:
        """Up to `limit` published events after feed position `position`, in feed order."""
        ...

    async def head(self) -> int:
        """The position of the last event published (0: none yet)."""
        ...

    async def oldest_unnumbered(self) -> datetime | None:
        """When the oldest committed event still without a position was created."""
        ...


class OutboxReader:
    """Reads a service's published outbox rows (`model`: its OutboxMixin table)."""

    def __init__(self, db: Database, model: type[Any]) -> None:
        self._db = db
        self._model = model
        table = cast(Table, model.__table__)
        self._page = (
            select(table)
            .where(table.c.position > bindparam("position"))
            .order_by(table.c.position)
            .limit(bindparam("limit"))
        )
        self._head = select(func.coalesce(func.max(table.c.position), 0).label("head"))
        self._oldest_unnumbered = (
            select(table.c.create_time)
            .where(table.c.position.is_(None))
            .order_by(table.c.id)
            .limit(1)
        )

    async def published_after(self, position: int, limit: int) -> Sequence[Event]:
        rows = await self._db.read_all(self._page, {"position": position, "limit": limit})
        return [loaded(self._model, row).to_event() for row in rows]

    async def head(self) -> int:
        row = await self._db.read_one(self._head, {})
        return int(row["head"]) if row is not None else 0

    async def oldest_unnumbered(self) -> datetime | None:
        row = await self._db.read_one(self._oldest_unnumbered, {})
        return as_utc(row["create_time"]) if row is not None else None


class Feed:
    """The published outbox, in feed order, for consumers to follow over gRPC;
    `published` wakes every follower when the relay published more."""

    def __init__(self, outbox: PublishedEvents) -> None:
        self._outbox = outbox
        self.published = Signal()

    async def open(
        self, context: grpc.aio.ServicerContext[Any, Any], heartbeat: float | None = None
    ) -> None:
        """Sends the stream's headers at once (a caught-up feed may have no event for a
        long time), with the head a follower must reach to have caught up, and the
        heartbeat interval when heartbeats were asked for."""
        headers = [(HEAD, str(await self._outbox.head()))]
        if heartbeat:
            headers.append((HEARTBEAT, f"{heartbeat:g}"))
        await context.send_initial_metadata(headers)

    async def on_published(self) -> None:
        """The relay's hook: wakes every follower."""
        self.published.fire()

    def events(self, after: int) -> AsyncGenerator[Event, None]:
        """Every published event after position `after`, then each new one, for ever."""
        return cast(AsyncGenerator[Event, None], self.events_and_heartbeats(after, None))

    async def events_and_heartbeats(
        self, after: int, heartbeat: float | None
    ) -> AsyncGenerator[Event | Heartbeat, None]:
        """`events(after)`, and a Heartbeat as soon as the events there were have been
        sent, then every `heartbeat` seconds (each after the events there are then),
        unless publishing has fallen behind (UNNUMBERED_GRACE)."""
        last = after
        # The first heartbeat as soon as the events there were have been sent.
        beat_at = time.monotonic() if heartbeat else math.inf
        while True:
            events = await self._outbox.published_after(last, FEED_BATCH)
            for event in events:
                yield event
                last = event.sequence or last
            if len(events) == FEED_BATCH:
                continue
            if heartbeat and time.monotonic() >= beat_at:
                beat_at = time.monotonic() + heartbeat
                beat = await self._heartbeat()
                if beat is not None:
                    yield beat
                    if beat.head > last:
                        continue  # published meanwhile: sent now, not after a wait
            await self.published.wait(min(IDLE_POLL, max(0.0, beat_at - time.monotonic())))

    async def _heartbeat(self) -> Heartbeat | None:
        """The head now; None while an event committed a while ago has no position yet
        (the relay stuck): a heartbeat then would vouch for events the feed lacks."""
        oldest = await self._outbox.oldest_unnumbered()
        if oldest is not None and (utcnow() - oldest).total_seconds() > UNNUMBERED_GRACE:
            return None
        return Heartbeat(await self._outbox.head())


def feed_message(message_type: type[FeedMessage], event: Event | Heartbeat) -> FeedMessage:
    """An outbox event (or a heartbeat) as the embedded feed streams it."""
    if isinstance(event, Heartbeat):
        return message_type(heartbeat=feed_pb2.FeedHeartbeat(head=event.head))
    response = message_type(sequence=event.sequence, headers=dict(event.headers))
    getattr(response, event.subject.replace(".", "_")).ParseFromString(event.payload)
    return response


def event_of(response: Any) -> Event:
    """A feed message as the consumer applies it."""
    field = response.WhichOneof("event")
    if field is None:
        # An event added to the contract after this build: applied as "nothing to do",
        # so the feed's position moves past it instead of stopping there for ever.
        return Event(
            event_id=f"feed-{response.sequence}",
            subject=UNKNOWN_SUBJECT,
            payload=b"",
            headers=dict(response.headers),
            sequence=response.sequence,
        )
    message = getattr(response, field)
    return Event(
        event_id=message.event_id,
        subject=field.replace("_", "."),
        payload=message.SerializeToString(),
        headers=dict(response.headers),
        sequence=response.sequence,
    )


def heartbeat_interval(request: Any) -> float | None:
    """The heartbeat interval a Stream*Events request asked for, in seconds (None: none)."""
    if not request.HasField("heartbeat_interval"):
        return None
    return float(request.heartbeat_interval.ToNanoseconds()) / 1e9


@dataclass(frozen=True)
class FeedOpener:
    """How a FeedFollower opens a producer's Stream*Events method after a position,
    asking for a heartbeat every `heartbeat` seconds (where the contract has them)."""

    method: Callable[..., grpc.aio.UnaryStreamCall[Any, Any]]
    request_type: type[Message]
    heartbeat: float | None = None

    def __call__(self, after: int) -> grpc.aio.UnaryStreamCall[Any, Any]:
        fields: dict[str, Any] = {"after_sequence": after}
        if self.heartbeat:
            interval = Duration()
            interval.FromNanoseconds(round(self.heartbeat * 1e9))
            fields["heartbeat_interval"] = interval
        return self.method(self.request_type(**fields), wait_for_ready=True)


opener = FeedOpener


class FeedFollower:
    """Follows a producer's feed over gRPC (`stream(after)` opens the call), from the
    consumer's stored position.

    Reconnects with backoff when the producer is away or the consumer fails; since the
    position is stored with each applied event, nothing is skipped or applied twice (unless
    the producer's outbox goes back behind the stored position: then it is never trusted).
    `following()` is True while the stream is open and the consumer has caught up with
    the feed's head: what the consumer knows is then as fresh as the feed. A feed that
    sends heartbeats (its x-feed-heartbeat header) is trusted up to the head of its last
    heartbeat (not the head it opened with, which no relay check stands behind), only while
    it is heard from at least every MISSED_HEARTBEATS intervals, and after a longer
    silence only once a new heartbeat came. One that sends none (an older producer) is
    trusted up to the head it opened with, until the channel's keepalive notices it gone
    (about 15 s), and not at all while it hangs with its connection up. A feed asked for
    heartbeats that is silent for REOPEN_AFTER_MISSED intervals, or does not open within
    that time, is opened again (on another replica, when the channel has several).
    """

    def __init__(
        self,
        name: str,
        stream: Callable[[int], grpc.aio.UnaryStreamCall[Any, Any]],
        consumer: Consumer,
    ) -> None:
        self._name = name
        self._stream = stream
        self._consumer = consumer
        self._caught_up = False
        # Until when (time.monotonic()) the feed is trusted without hearing from it again.
        self._heard_until = math.inf
        # The heartbeat interval the current stream announced (None: it sends none).
        self.heartbeats: float | None = None

    def following(self) -> bool:
        return self._caught_up and time.monotonic() < self._heard_until

    async def run(self) -> None:
        backoff = 0.1
        while True:
            call: grpc.aio.UnaryStreamCall[Any, Any] | None = None
            try:
                position = await self._consumer.position()
                call = self._stream(position)
                # A producer asked for heartbeats that does not even open the stream within
                # the silence it would be reopened after (hung, its connection up) is left
                # for another try, which the channel may send to another replica.
                metadata = await _within(call.initial_metadata(), self._open_within())
                # None: a producer that sends no head (older, or refusing the call).
                head = _head(metadata)
                if head is not None:
                    backoff = 0.1
                # Past the head: the producer's outbox went back (restored, recreated), and
                # its events between the head and this position would never come. Never
                # trusted; recovering (resetting the position) is an operator's decision.
                behind_us = head is not None and self._behind(position, head)
                self.heartbeats = _interval(metadata)
                silence = MISSED_HEARTBEATS * self.heartbeats if self.heartbeats else math.inf
                reopen = REOPEN_AFTER_MISSED * self.heartbeats if self.heartbeats else None
                if self.heartbeats:
                    head = None  # trusted up to a heartbeat's head only
                self._heard_until = time.monotonic() + silence
                self._caught_up = head is not None and position == head and not behind_us
                while True:
                    response = await _within(cast(Awaitable[Any], call.read()), reopen)
                    if response is grpc.aio.EOF:
                        break
                    now = time.monotonic()
                    if now > self._heard_until:
                        # Silent too long: what it held back may be on its way; only a new
                        # heartbeat says how far the feed goes now.
                        head, self._caught_up = None, False
                    self._heard_until = now + silence
                    if _is_heartbeat(response):
                        head = response.heartbeat.head
                        behind_us = behind_us or self._behind(position, head)
                        self._caught_up = not behind_us and position >= head
                        continue
                    await self._consumer.apply(event_of(response), position=response.sequence)
                    position = response.sequence
                    if head is not None and not behind_us and position >= head:
                        self._caught_up = True
            except FeedSilent:
                log.warning(
                    "event feed silent; reopening it",
                    extra={"feed": self._name, "retry_in_s": backoff},
                )
            except grpc.aio.AioRpcError as error:
                log.warning(
                    "event feed interrupted; reconnecting",
                    extra={"feed": self._name, "code": error.code().name, "retry_in_s": backoff},
                )
            except Exception as error:
                # The traceback once; then a line per retry while it lasts.
                if backoff == 0.1:
                    log.exception("event feed failed; reconnecting", extra={"feed": self._name})
                else:
                    log.warning(
                        "event feed failed again; reconnecting",
                        extra={"feed": self._name, "error": type(error).__name__},
                    )
            finally:
                self._caught_up = False
                self.heartbeats = None
                if call is not None:
                    call.cancel()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)

    def _open_within(self) -> float | None:
        asked = self._stream.heartbeat if isinstance(self._stream, FeedOpener) else None
        return REOPEN_AFTER_MISSED * asked if asked else None

    def _behind(self, position: int, head: int) -> bool:
        if position <= head:
            return False
        log.error(
            "event feed is behind this consumer's position; not trusted",
            extra={"feed": self._name, "position": position, "head": head},
        )
        return True


class FeedSilent(Exception):
    """A feed asked for heartbeats sent nothing, not even its headers, for
    REOPEN_AFTER_MISSED of them."""


async def _within(step: Awaitable[Result], seconds: float | None) -> Result:
    """A step of the stream (its headers, its next message); FeedSilent after `seconds`."""
    try:
        async with asyncio.timeout(seconds):
            return await step
    except TimeoutError:
        raise FeedSilent from None


def _is_heartbeat(response: Any) -> bool:
    """A heartbeat, not an event (feed messages whose contract has no heartbeat: never)."""
    return "heartbeat" in response.DESCRIPTOR.fields_by_name and response.HasField("heartbeat")


def _header(metadata: Any, name: str) -> str | None:
    for key, value in metadata or ():
        if key == name:
            return str(value)
    return None


def _head(metadata: Any) -> int | None:
    try:
        return int(_header(metadata, HEAD) or "")
    except ValueError:
        return None


def _interval(metadata: Any) -> float | None:
    """The heartbeat interval the feed announced, in seconds (None: it sends none)."""
    try:
        seconds = float(_header(metadata, HEARTBEAT) or "")
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds > 0 else None
