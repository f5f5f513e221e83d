"""The consumer side: applying each event once, whatever the transport delivers.

`Consumer.apply` runs the service's handler and records the event id (and, for
the embedded feed, the new position) in the same transaction as the handler's
writes, so a redelivered event is recognised and skipped, and a crash between
the write and the acknowledgement loses nothing.

That transaction is a driver-level one (`Database.transaction`) of Core statements
built once per consumer: through the ORM's session it was most of the CPU an event
cost.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, cast

from sqlalchemy import BigInteger, DateTime, String, Table
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, mapped_column

from services.common.db import Database
from services.common.events.envelope import Event
from services.common.events.tracing import age_seconds, consuming
from services.common.times import utcnow
from services.common.transactions import Transaction

log = logging.getLogger("shop.consumer")

# Writes what the event means in the consumer's own tables, in the consumer's
# transaction; may return an action to run once it has committed (such as pushing to
# live streams).
Handler = Callable[[Transaction, Event], Awaitable[Callable[[], None] | None]]


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
        self._position = position_model
        # The statements, built once (then compiled once): the tables are the service's.
        processed = cast(Table, processed_model.__table__)
        # No row when the event was recorded before: a redelivery, or a twin delivery
        # on another replica, whose commit this insert waits for on the primary key.
        self._record = db.insert(processed).on_conflict_do_nothing()
        positions = cast(Table, position_model.__table__)
        save = db.insert(positions)
        # Forward only: a replay of older events never moves it back.
        self._save = save.on_conflict_do_update(
            index_elements=[positions.c.consumer],
            set_={"position": save.excluded.position},
            where=positions.c.position < save.excluded.position,
        )
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
            async with self._db.transaction() as tx:
                if position is not None:
                    await self._save_position(tx, position)
                recorded = await tx.execute(
                    self._record,
                    {"consumer": self.name, "event_id": event.event_id, "process_time": utcnow()},
                )
                if not recorded:  # seen before: the handler does not run
                    self.duplicates += 1
                    return False
                after_commit = await self._handler(tx, event)
        except IntegrityError:
            # The handler's own unique keys refused a second copy of the event's writes:
            # a repeat all the same, of which only the position is kept.
            log.info("duplicate event", extra={"event_id": event.event_id})
            self.duplicates += 1
            if position is not None:
                async with self._db.transaction() as tx:
                    await self._save_position(tx, position)
            return False
        self.applied += 1
        if after_commit is not None:
            after_commit()
        return True

    async def _save_position(self, tx: Transaction, position: int) -> None:
        await tx.execute(self._save, {"consumer": self.name, "position": position})
