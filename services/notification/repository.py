"""Every query of the notification service. Each method of `SqlNotificationRepository`
is one transaction of its own, except the `NotificationStore` it hands the event
consumer, which writes in the consumer's transaction (the platform's Consumer owns it,
so a notification commits together with the record that its event was applied; its
statements are Core ones, built once, on the driver: `Database.transaction`). The
use cases see the Protocols, so their tests can hand them in-memory ones."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Protocol, cast

from sqlalchemy import BigInteger, String, Table, bindparam, func, insert, select, text

from services.common.db import Database
from services.common.transactions import Transaction
from services.notification.models import NotificationRow, UnknownNotifications

# Every replica LISTENs here (PostgreSQL): the payload is the user whose stream has news.
CHANNEL = "shop_notifications"

NOTIFICATIONS = cast(Table, NotificationRow.__table__)
# Every column but `seq`, which the database numbers.
STORED_COLUMNS = tuple(column.key for column in NOTIFICATIONS.columns if column.key != "seq")
# inline(): no RETURNING of the new `seq` (PostgreSQL's default), which nothing reads.
INSERT_NOTIFICATION = (
    insert(NOTIFICATIONS).values({name: bindparam(name) for name in STORED_COLUMNS}).inline()
)
# The user's next number; the counter row stays locked until the transaction ends.
_TAKE_USER_SEQ = (
    "INSERT INTO user_sequences (user_id, last_seq) VALUES (:user_id, 1) "
    "ON CONFLICT (user_id) DO UPDATE SET last_seq = user_sequences.last_seq + 1 "
    "RETURNING last_seq"
)
TAKE_USER_SEQ = text(_TAKE_USER_SEQ).columns(last_seq=BigInteger())
# The same, telling every replica that the user has news (PostgreSQL delivers NOTIFY on
# commit, and never for a rollback) in the same round trip.
TAKE_USER_SEQ_AND_ANNOUNCE = text(
    _TAKE_USER_SEQ + ", pg_notify(:channel, user_sequences.user_id) AS announced"
).columns(last_seq=BigInteger(), announced=String())


class NotificationStore(Protocol):
    """Writes within the event consumer's transaction."""

    async def add(self, notification: NotificationRow) -> None:
        """Stores it numbered in its user's sequence (sets `user_seq`); the user's
        number stays taken by this transaction until it ends, so one user's
        notifications commit in the order of their numbers. When it commits, every
        replica hears that the user has news."""
        ...


class NotificationRepository(Protocol):
    async def page(
        self, user_id: str, unread_only: bool, before: int | None, limit: int
    ) -> Sequence[NotificationRow]:
        """Up to `limit` of the user's notifications numbered below `before`, newest first."""
        ...

    async def mark_read(
        self, user_id: str, ids: Sequence[str], at: datetime
    ) -> Sequence[NotificationRow]:
        """The user's notifications `ids` (in that order), those still unread now read
        since `at`. Raises UnknownNotifications, changing nothing, when any of the ids
        is not one of the user's."""
        ...

    async def after(self, user_id: str, after_seq: int, limit: int) -> Sequence[NotificationRow]:
        """Up to `limit` of the user's notifications numbered above `after_seq`, in order."""
        ...

    async def unread(self, user_id: str) -> tuple[Sequence[NotificationRow], int]:
        """The user's unread notifications, in order, and the newest number given to the
        user so far (0: none yet), which later reads continue from."""
        ...

    async def seq_of_legacy_cursor(self, user_id: str, seq: int) -> int:
        """A cursor from before per-user numbers pointed at the global `seq`: the user's
        number of the last notification at or before it (0: none)."""
        ...


class SqlNotificationRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    def store_in(self, transaction: Transaction) -> NotificationStore:
        """The store of the event consumer's transaction."""
        return _TransactionStore(transaction, announce=not self._db.is_sqlite)

    async def page(
        self, user_id: str, unread_only: bool, before: int | None, limit: int
    ) -> Sequence[NotificationRow]:
        query = (
            select(NotificationRow)
            .where(NotificationRow.user_id == user_id)
            .order_by(NotificationRow.user_seq.desc())
            .limit(limit)
        )
        if unread_only:
            query = query.where(NotificationRow.read.is_(False))
        if before is not None:
            query = query.where(NotificationRow.user_seq < before)
        async with self._db.read() as session:
            return (await session.scalars(query)).all()

    async def mark_read(
        self, user_id: str, ids: Sequence[str], at: datetime
    ) -> Sequence[NotificationRow]:
        query = select(NotificationRow).where(
            NotificationRow.user_id == user_id, NotificationRow.id.in_(ids)
        )
        async with self._db.write() as session:
            found = {row.id: row for row in (await session.scalars(query)).all()}
            missing = [i for i in ids if i not in found]
            if missing:
                raise UnknownNotifications(missing)
            for row in found.values():
                if not row.read:
                    row.read = True
                    row.read_time = at
        return [found[i] for i in ids]

    async def after(self, user_id: str, after_seq: int, limit: int) -> Sequence[NotificationRow]:
        query = (
            select(NotificationRow)
            .where(NotificationRow.user_id == user_id, NotificationRow.user_seq > after_seq)
            .order_by(NotificationRow.user_seq)
            .limit(limit)
        )
        async with self._db.read() as session:
            return (await session.scalars(query)).all()

    async def unread(self, user_id: str) -> tuple[Sequence[NotificationRow], int]:
        newest = select(func.max(NotificationRow.user_seq)).where(
            NotificationRow.user_id == user_id
        )
        async with self._db.read() as session:
            last = int(await session.scalar(newest) or 0)
            # Up to `last` only: what commits after it is read as news, not twice.
            query = (
                select(NotificationRow)
                .where(
                    NotificationRow.user_id == user_id,
                    NotificationRow.read.is_(False),
                    NotificationRow.user_seq <= last,
                )
                .order_by(NotificationRow.user_seq)
            )
            return (await session.scalars(query)).all(), last

    async def seq_of_legacy_cursor(self, user_id: str, seq: int) -> int:
        query = select(func.max(NotificationRow.user_seq)).where(
            NotificationRow.user_id == user_id, NotificationRow.seq <= seq
        )
        async with self._db.read() as session:
            return int(await session.scalar(query) or 0)


class _TransactionStore:
    def __init__(self, transaction: Transaction, *, announce: bool) -> None:
        self._transaction = transaction
        self._take_seq = TAKE_USER_SEQ_AND_ANNOUNCE if announce else TAKE_USER_SEQ

    async def add(self, notification: NotificationRow) -> None:
        transaction = self._transaction
        user_id = notification.user_id
        taken = await transaction.fetch_one(
            self._take_seq, {"user_id": user_id, "channel": CHANNEL}
        )
        assert taken is not None  # an upsert's RETURNING always has its row
        notification.user_seq = int(taken["last_seq"])
        # IntegrityError (the event's notification is there already) is left to the
        # Consumer, which takes the delivery for a repeat.
        await transaction.execute(
            INSERT_NOTIFICATION, {name: getattr(notification, name) for name in STORED_COLUMNS}
        )
