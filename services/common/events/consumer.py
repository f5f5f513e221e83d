"""The consumer side: applying each event once, whatever the transport delivers.

`Consumer.apply` runs the service's handler and records the event id (and, for
the embedded feed, the new position) in the same transaction as the handler's
writes, so a redelivered event is recognised and skipped, and a crash between
the write and the acknowledgement loses nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, DateTime, String
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from services.common.db import Database
from services.common.events.envelope import Event
from services.common.events.tracing import age_seconds, consuming
from services.common.times import utcnow

log = logging.getLogger("shop.consumer")

# Writes what the event means in the consumer's own tables; may return an action to
# run once the transaction has committed (such as pushing to live streams).
Handler = Callable[[AsyncSession, Event], Awaitable[Callable[[], None] | None]]


class ProcessedEventMixin:
    """One row per event a consumer has applied: the deduplication record."""

    consumer: Mapped[str] = mapped_column(String(64), primary_key=True)
    event_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    process_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class PositionMixin:
    """How far a consumer has read the embedded feed."""

    consumer: Mapped[str] = mapped_column(String(64), primary_key=True)
    position: Mapped[int] = mapped_column(BigInteger)


class Consumer:
    def __init__(
        self,
        db: Database,
        name: str,
        handler: Handler,
        processed_model: type[Any],
        position_model: type[Any],
    ) -> None:
        self._db = db
        self.name = name
        self._handler = handler
        self._processed = processed_model
        self._position = position_model
        # Counters since start: events applied here, and deliveries recognised as repeats.
        self.applied = 0
        self.duplicates = 0
        # Seconds from commit to apply of the last event applied or seen again.
        self.lag_seconds = 0.0

    async def position(self) -> int:
        async with self._db.read() as session:
            row = await session.get(self._position, self.name)
        return int(row.position) if row is not None else 0

    async def apply(self, event: Event, *, position: int | None = None) -> bool:
        """Applies the event unless it was applied before; True when applied now."""
        with consuming(event, self.name):
            applied = await self._apply(event, position)
        age = age_seconds(event)
        if age is not None:
            self.lag_seconds = age
        return applied

    async def _apply(self, event: Event, position: int | None) -> bool:
        after_commit = None
        try:
            async with self._db.write() as session:
                if position is not None:
                    await self._save_position(session, position)
                seen = await session.get(self._processed, (self.name, event.event_id))
                if seen is not None:
                    self.duplicates += 1
                    return False
                session.add(
                    self._processed(
                        consumer=self.name, event_id=event.event_id, process_time=utcnow()
                    )
                )
                await session.flush()  # a concurrent twin fails here, not after the handler
                after_commit = await self._handler(session, event)
        except IntegrityError:
            # Another replica applied the same event at the same moment.
            log.info("duplicate event", extra={"event_id": event.event_id})
            self.duplicates += 1
            if position is not None:
                async with self._db.write() as session:
                    await self._save_position(session, position)
            return False
        self.applied += 1
        if after_commit is not None:
            after_commit()
        return True

    async def _save_position(self, session: AsyncSession, position: int) -> None:
        row = await session.get(self._position, self.name)
        if row is None:
            session.add(self._position(consumer=self.name, position=position))
        elif position > row.position:
            row.position = position
