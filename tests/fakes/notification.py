"""In-memory fakes for the notification use cases: the repository (with the store the
event consumer writes through) and a consumer that applies each event id once, as
services.common.events.consumer.Consumer does with its processed-events table."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable, Sequence
from datetime import datetime

from services.common.events.envelope import Event
from services.notification import order_events
from services.notification.models import NotificationRow, UnknownNotifications
from services.notification.usecases import Notifications


class InMemoryNotifications:
    """NotificationRepository over a list, with the tables' unique constraints."""

    def __init__(self) -> None:
        self.rows: list[NotificationRow] = []
        self.last_seq: dict[str, int] = {}
        # Every stream read, ("after" | "unread", user, number read above), to wait for.
        self.reads: list[tuple[str, str, int]] = []
        self._read = asyncio.Condition()

    async def until_read(self, kind: str, user_id: str, above: int = 0) -> None:
        """Until a stream has made that read."""
        async with self._read:
            await self._read.wait_for(lambda: (kind, user_id, above) in self.reads)

    async def _note(self, kind: str, user_id: str, above: int) -> None:
        async with self._read:
            self.reads.append((kind, user_id, above))
            self._read.notify_all()

    def transaction(self) -> InMemoryStore:
        """A consumer transaction: nothing is visible before `commit()`."""
        return InMemoryStore(self)

    def _of(self, user_id: str) -> list[NotificationRow]:
        return sorted(
            (row for row in self.rows if row.user_id == user_id), key=lambda row: row.user_seq
        )

    async def page(
        self, user_id: str, unread_only: bool, before: int | None, limit: int
    ) -> Sequence[NotificationRow]:
        rows = [
            row
            for row in reversed(self._of(user_id))
            if (not unread_only or not row.read) and (before is None or row.user_seq < before)
        ]
        return [copy.copy(row) for row in rows[:limit]]

    async def mark_read(
        self, user_id: str, ids: Sequence[str], at: datetime
    ) -> Sequence[NotificationRow]:
        found = {row.id: row for row in self._of(user_id) if row.id in ids}
        missing = [i for i in ids if i not in found]
        if missing:
            raise UnknownNotifications(missing)
        for row in found.values():
            if not row.read:
                row.read, row.read_time = True, at
        return [copy.copy(found[i]) for i in ids]

    async def after(self, user_id: str, after_seq: int, limit: int) -> Sequence[NotificationRow]:
        await self._note("after", user_id, after_seq)
        rows = [row for row in self._of(user_id) if row.user_seq > after_seq]
        return [copy.copy(row) for row in rows[:limit]]

    async def unread(self, user_id: str) -> tuple[Sequence[NotificationRow], int]:
        await self._note("unread", user_id, 0)
        rows = self._of(user_id)
        return [copy.copy(row) for row in rows if not row.read], self.last_seq.get(user_id, 0)

    async def seq_of_legacy_cursor(self, user_id: str, seq: int) -> int:
        return max((row.user_seq for row in self._of(user_id) if row.seq <= seq), default=0)


class DuplicateRow(Exception):
    """What the database's unique constraints would refuse."""


class InMemoryStore:
    """NotificationStore of one consumer transaction: numbers and rows count at commit."""

    def __init__(self, repository: InMemoryNotifications) -> None:
        self._repository = repository
        self._pending: list[NotificationRow] = []

    async def add(self, notification: NotificationRow) -> None:
        repository = self._repository
        user_id = notification.user_id
        if any(
            row.event_id == notification.event_id and row.user_id == user_id
            for row in [*repository.rows, *self._pending]
        ):
            raise DuplicateRow(notification.event_id)
        taken = sum(1 for row in self._pending if row.user_id == user_id)
        notification.user_seq = repository.last_seq.get(user_id, 0) + taken + 1
        self._pending.append(notification)

    def commit(self) -> None:
        repository = self._repository
        for row in self._pending:
            row.seq = len(repository.rows) + 1
            repository.rows.append(row)
            repository.last_seq[row.user_id] = row.user_seq
        self._pending = []


class InMemoryConsumer:
    """Applies each event id once: the parsing and the use case run in one transaction
    with the record of the event, and what they return runs after the commit."""

    def __init__(self, notifications: Notifications, repository: InMemoryNotifications) -> None:
        self._notifications = notifications
        self._repository = repository
        self.processed: set[str] = set()
        self.applied = 0
        self.duplicates = 0

    async def apply(self, event: Event) -> bool:
        if event.event_id in self.processed:
            self.duplicates += 1
            return False
        parsed = order_events.parse(event)
        after_commit: Callable[[], None] | None = None
        store = self._repository.transaction()
        if parsed is not None:
            after_commit = await self._notifications.record(store, parsed)
        store.commit()
        self.processed.add(event.event_id)
        self.applied += 1
        if after_commit is not None:
            after_commit()
        return True
