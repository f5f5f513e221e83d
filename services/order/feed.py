"""The embedded event feed: the outbox, in feed order, for consumers to follow over gRPC."""

from __future__ import annotations

from collections.abc import AsyncIterator

from sqlalchemy import select

from services.common.db import Database
from services.common.events.envelope import Event
from services.common.events.outbox import Signal
from services.order.models import OutboxRow

BATCH = 200
# How long a caught-up stream waits before looking again (for another replica's relay).
IDLE_POLL = 0.5


class Feed:
    def __init__(self, db: Database) -> None:
        self._db = db
        self.published = Signal()

    async def events(self, after: int) -> AsyncIterator[Event]:
        """Every published event after position `after`, then each new one, for ever."""
        last = after
        while True:
            async with self._db.read() as session:
                rows = (
                    await session.scalars(
                        select(OutboxRow)
                        .where(OutboxRow.position > last)
                        .order_by(OutboxRow.position)
                        .limit(BATCH)
                    )
                ).all()
            for row in rows:
                yield row.to_event()
                last = row.position or last
            if len(rows) < BATCH:
                await self.published.wait(IDLE_POLL)
