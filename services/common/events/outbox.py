"""The transactional outbox and the relay that publishes it, in order.

Producers add an `OutboxMixin` row in the same transaction as the change it
announces, so an event exists exactly when its change was committed. The relay
takes unpublished rows in insertion order, hands them to a sink (a no-op for
the embedded feed, JetStream for NATS), then stamps each with the next feed
position. On PostgreSQL an advisory lock makes relay passes of several replicas
take turns, so positions are given in order and the feed has no gaps. A row that
commits late (after rows inserted after it) is simply taken by a later pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

from opentelemetry import propagate
from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Integer,
    LargeBinary,
    String,
    bindparam,
    func,
    select,
    update,
)
from sqlalchemy.orm import Mapped, mapped_column

from services.common.db import Database, loaded
from services.common.events.envelope import Event
from services.common.events.tracing import CREATE_TIME, publishing
from services.common.metrics import Metrics
from services.common.times import as_utc, utcnow

log = logging.getLogger("shop.outbox")

BATCH = 200


class OutboxMixin:
    """Columns of an outbox table; a service declares `class Outbox(Base, OutboxMixin)`."""

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    event_id: Mapped[str] = mapped_column(String(64), unique=True)
    subject: Mapped[str] = mapped_column(String(128))
    payload: Mapped[bytes] = mapped_column(LargeBinary)
    headers: Mapped[dict[str, str]] = mapped_column(JSON)
    create_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # Set by the relay: the event's position in the feed, and when it was published.
    position: Mapped[int | None] = mapped_column(BigInteger, unique=True)
    publish_time: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    def to_event(self) -> Event:
        return Event(
            event_id=self.event_id,
            subject=self.subject,
            payload=self.payload,
            headers={**(self.headers or {}), CREATE_TIME: as_utc(self.create_time).isoformat()},
            sequence=self.position or 0,
        )


def outbox_values(event: Event) -> dict[str, Any]:
    """The event as an outbox row, carrying the trace context of the change it announces."""
    headers = dict(event.headers)
    propagate.inject(headers)
    return {
        "event_id": event.event_id,
        "subject": event.subject,
        "payload": event.payload,
        "headers": headers,
        "create_time": utcnow(),
    }


class Sink(Protocol):
    async def publish(self, event: Event) -> None: ...


class NoSink:
    """The embedded transport: the outbox itself is the log consumers read."""

    async def publish(self, event: Event) -> None:
        return None


MAX_RETRY_PAUSE = 5.0


class Relay:
    """Publishes committed outbox rows in order; `wake()` after a commit to skip the poll wait."""

    def __init__(
        self,
        db: Database,
        model: type[Any],
        sink: Sink,
        *,
        name: str,
        poll_interval: float = 0.5,
        on_published: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._db = db
        self._model = model
        table = model.__table__
        # Compiled once (Database.read_all, Database.transaction): a pass is a hot path.
        self._unsent = (
            select(table).where(table.c.position.is_(None)).order_by(table.c.id).limit(BATCH)
        )
        self._last_position = select(func.max(table.c.position).label("last"))
        self._stamp_one = (
            update(table)
            .where(table.c.id == bindparam("row_id"), table.c.position.is_(None))
            .values(position=bindparam("position"), publish_time=bindparam("at"))
        )
        self.sink = sink
        self._lock_key = zlib.crc32(f"shop-outbox-relay-{name}".encode())
        self._poll = poll_interval
        self._wakeup = asyncio.Event()
        self._on_published = on_published
        self._local = asyncio.Lock()
        # As of the last pass, for the metrics: events not yet published, and the oldest.
        self.backlog = 0
        self.oldest_unsent: datetime | None = None

    def oldest_unsent_age(self) -> float:
        if self.oldest_unsent is None:
            return 0.0
        return max(0.0, (datetime.now(UTC) - as_utc(self.oldest_unsent)).total_seconds())

    def wake(self) -> None:
        self._wakeup.set()

    def export(self, metrics: Metrics) -> None:
        """The relay's gauges: how far publishing is behind."""
        metrics.gauge(
            "outbox_backlog_events", "Committed events not yet published.", lambda: self.backlog
        )
        metrics.gauge(
            "outbox_oldest_unsent_age_seconds",
            "Age of the oldest committed event not yet published (0 when none).",
            self.oldest_unsent_age,
        )

    async def run(self) -> None:
        """The relay loop, for the life of the service.

        A pass that fails (the broker away or electing a leader, the database busy) is
        expected: a warning, and the next pass after a growing pause (up to
        MAX_RETRY_PAUSE); what was not published stays in the outbox, in order."""
        pause = self._poll
        failures = 0
        while True:
            self._wakeup.clear()
            try:
                published = await self.publish_pending()
            except Exception as error:
                failures += 1
                log.warning(
                    "outbox relay pass failed; retrying",
                    extra={
                        "error": type(error).__name__,
                        "detail": str(error)[:300],
                        "failures_in_a_row": failures,
                        "retry_in_s": pause,
                    },
                    exc_info=failures == 1,  # the traceback once, not every few seconds
                )
                await asyncio.sleep(pause)
                pause = min(pause * 2, MAX_RETRY_PAUSE)
                continue
            pause, failures = self._poll, 0
            if published and self._on_published is not None:
                await self._on_published()
            if published < BATCH:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), self._poll)

    async def publish_pending(self) -> int:
        """One pass: publishes up to BATCH rows, in order; returns how many.

        No database write lock is held while the sink does network I/O: rows are
        read, published, and only then stamped in one short transaction (a broker
        that is down must not stall the order writes that share the database).
        """
        model = self._model
        async with self._leader():
            rows = [loaded(model, row) for row in await self._db.read_all(self._unsent, {})]
            published: list[int] = []
            try:
                for row in rows:
                    with publishing(row.to_event()) as event:
                        await self.sink.publish(event)
                    published.append(row.id)
            finally:
                if published:
                    await self._stamp(published)
                unsent = rows[len(published) :]
                self.oldest_unsent = unsent[0].create_time if unsent else None
                self.backlog = len(unsent)
            if len(rows) == BATCH:
                self.backlog = await backlog(self._db, model)
        if published:
            log.debug("published", extra={"count": len(published)})
        return len(published)

    async def _stamp(self, ids: Sequence[int]) -> None:
        """Gives the published rows their feed positions, in publication order."""
        async with self._db.transaction() as tx:
            found = await tx.fetch_one(self._last_position)
            last = (found or {}).get("last") or 0
            now = utcnow()
            for row_id in ids:
                stamp = {"row_id": row_id, "position": last + 1, "at": now}
                if await tx.execute(self._stamp_one, stamp) == 1:
                    last += 1

    @contextlib.asynccontextmanager
    async def _leader(self) -> AsyncIterator[None]:
        """One relay pass at a time: per process, and on PostgreSQL across replicas."""
        async with self._local, self._db.advisory_lock(self._lock_key):
            yield


async def backlog(db: Database, model: type[Any]) -> int:
    """How many committed events wait for the relay."""
    async with db.read() as session:
        return int(await session.scalar(select(func.count()).where(model.position.is_(None))) or 0)


class Signal:
    """Wakes every waiter at once (each new event in the feed), without queues."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def fire(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def wait(self, timeout: float) -> None:
        event = self._event
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)
