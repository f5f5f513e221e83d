"""Notification use cases: turning order events into notifications, reading them,
marking them read, and streaming them live from a cursor."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Callable, Sequence

import grpc
from sqlalchemy.ext.asyncio import AsyncSession

from services.common.db import Database
from services.common.errors import DomainError, NotFound
from services.common.events.envelope import Event
from services.common.events.order_feed import MESSAGES, ORDER_CREATED
from services.common.ids import new_id
from services.common.pagination import PageTokens, page_size
from services.common.times import utcnow
from services.notification import models, repository
from services.notification.hub import Hub, StreamLimitReached
from services.notification.models import NotificationRow
from shop.order.v1 import order_pb2

log = logging.getLogger("shop.notification")

# A stream with no wake-up looks in the database this often anyway: the bound on
# delivery when wake-ups are lost (SQLite files shared by replicas, a dropped LISTEN).
CATCH_UP_INTERVAL = 1.0
REPLAY_BATCH = 500

# Digits after the decimal point, where not 2 (ISO 4217).
_MINOR_DIGITS = {
    "BIF": 0,
    "CLP": 0,
    "DJF": 0,
    "GNF": 0,
    "ISK": 0,
    "JPY": 0,
    "KMF": 0,
    "KRW": 0,
    "PYG": 0,
    "RWF": 0,
    "UGX": 0,
    "VND": 0,
    "VUV": 0,
    "XAF": 0,
    "XOF": 0,
    "XPF": 0,
    "BHD": 3,
    "IQD": 3,
    "JOD": 3,
    "KWD": 3,
    "LYD": 3,
    "OMR": 3,
    "TND": 3,
}


def format_money(amount_minor: int, currency: str) -> str:
    digits = _MINOR_DIGITS.get(currency, 2)
    if digits == 0:
        return f"{amount_minor} {currency}"
    sign = "-" if amount_minor < 0 else ""
    units, minor = divmod(abs(amount_minor), 10**digits)
    return f"{sign}{units}.{minor:0{digits}d} {currency}"


def describe(subject: str, order: order_pb2.Order) -> tuple[str, str, str]:
    """(kind, title, body) of the notification for an order event."""
    count = sum(item.quantity for item in order.items)
    total = format_money(order.total.amount_minor, order.total.currency_code)
    if subject == ORDER_CREATED:
        noun = "item" if count == 1 else "items"
        return (
            models.ORDER_PLACED,
            "Order placed",
            f"Your order {order.id} of {count} {noun} totalling {total} has been placed.",
        )
    reason = f" Reason: {order.cancel_reason}" if order.cancel_reason else ""
    return (
        models.ORDER_CANCELLED,
        "Order cancelled",
        f"Your order {order.id} has been cancelled; {total} will not be charged.{reason}",
    )


class TooManyStreams(DomainError):
    def __init__(self) -> None:
        super().__init__(
            "too many open notification streams; retry later",
            "TOO_MANY_STREAMS",
            code=grpc.StatusCode.RESOURCE_EXHAUSTED,
        )


# Stream reads running at once on one replica: a wake-up of many streams must not take
# every connection of the pool (or of the database server) at the same moment.
CONCURRENT_STREAM_READS = 4


class Notifications:
    def __init__(self, db: Database, page_tokens: PageTokens, hub: Hub) -> None:
        self._db = db
        self._tokens = page_tokens
        self.hub = hub
        self._reads = asyncio.Semaphore(CONCURRENT_STREAM_READS)

    # -- from events ---------------------------------------------------------

    async def handle(self, session: AsyncSession, event: Event) -> Callable[[], None] | None:
        """The consumer's handler: one notification per user and event, numbered in the
        user's own sequence, in the consumer's transaction."""
        message_type = MESSAGES.get(event.subject)
        if message_type is None:
            log.info("ignored event", extra={"subject": event.subject})
            return None
        message = message_type.FromString(event.payload)
        user_id = message.order.user_id
        kind, title, body = describe(event.subject, message.order)
        session.add(
            NotificationRow(
                id=new_id("ntf"),
                user_id=user_id,
                user_seq=await repository.next_user_seq(session, user_id),
                kind=kind,
                title=title,
                body=body,
                order_id=message.order.id,
                event_id=event.event_id,
                read=False,
                create_time=utcnow(),
                read_time=None,
            )
        )
        await session.flush()
        await repository.announce(session, user_id)
        return lambda: self.hub.wake(user_id)

    # -- reading -------------------------------------------------------------

    async def list_page(
        self, user_id: str, unread_only: bool, requested_size: int | None, token: str
    ) -> tuple[Sequence[NotificationRow], str]:
        """One user's notifications, newest first."""
        size = page_size(requested_size)
        query_key = f"v2:user={user_id}&unread={unread_only}"
        before = self._tokens.decode(token, query_key)
        async with self._db.read() as session:
            rows = await repository.page(
                session, user_id, unread_only, None if before is None else int(before), size + 1
            )
        return self._tokens.page(rows, size, key=lambda row: str(row.user_seq), query=query_key)

    async def mark_read(self, user_id: str, ids: Sequence[str]) -> list[NotificationRow]:
        """All of `ids` (the user's) become read; NOT_FOUND, changing nothing, if any is not."""
        async with self._db.write() as session:
            rows = await repository.by_ids(session, user_id, ids)
            found = {row.id: row for row in rows}
            missing = [i for i in ids if i not in found]
            if missing:
                raise NotFound("notification", *missing)
            now = utcnow()
            for row in rows:
                if not row.read:
                    row.read = True
                    row.read_time = now
        return [found[i] for i in ids]

    # -- streaming -----------------------------------------------------------

    def cursor_of(self, user_id: str, notification: NotificationRow) -> str:
        return self._tokens.encode(str(notification.user_seq), _stream_key(user_id))

    async def _resume_from(self, user_id: str, cursor: str) -> int | None:
        """The user_seq a cursor points at (None: no cursor)."""
        if not cursor:
            return None
        try:
            return int(self._tokens.decode(cursor, _stream_key(user_id), field="cursor") or 0)
        except DomainError:
            # A cursor from before per-user numbers (it points at the global seq).
            legacy = self._tokens.decode(cursor, f"stream:{user_id}", field="cursor")
            async with self._db.read() as session:
                return await repository.seq_of_legacy_cursor(session, user_id, int(legacy or 0))

    async def stream(self, user_id: str, cursor: str) -> AsyncGenerator[NotificationRow, None]:
        """What the client has not seen (after its cursor; with none, what is unread),
        then each new notification, exactly once and in the user's order, whichever
        replica stored it. The database is read after each wake-up (from this replica,
        from another through the database's notifications, or a periodic look)."""
        after = await self._resume_from(user_id, cursor)
        try:
            subscription = self.hub.subscribe(user_id)  # before reading: no wake-up is missed
        except StreamLimitReached:
            raise TooManyStreams() from None
        try:
            if after is None:
                async with self._reads, self._db.read() as session:
                    last = await repository.newest_seq(session, user_id)
                    unread = await repository.unread_up_to(session, user_id, last)
                for row in unread:
                    yield row
            else:
                last = after
            while True:
                subscription.clear()
                async with self._reads, self._db.read() as session:
                    rows = await repository.after(session, user_id, last, REPLAY_BATCH)
                for row in rows:
                    yield row
                    last = row.user_seq
                if len(rows) < REPLAY_BATCH:
                    await subscription.wait(CATCH_UP_INTERVAL)
        finally:
            self.hub.unsubscribe(subscription)


def _stream_key(user_id: str) -> str:
    return f"stream.v2:{user_id}"
