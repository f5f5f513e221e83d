"""Notification use cases: turning order and payment events into notifications, reading them,
marking them read, and streaming them live from a cursor."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Callable, Sequence

from services.common.db import loaded
from services.common.errors import DomainError, NotFound
from services.common.ids import new_id
from services.common.pagination import PageTokens, page_size
from services.common.times import utcnow
from services.notification import models
from services.notification.hub import Hub, StreamLimitReached
from services.notification.models import (
    NotificationRow,
    OrderEvent,
    TooManyStreams,
    UnknownNotifications,
)
from services.notification.repository import NotificationRepository, NotificationStore

# A stream with no wake-up looks in the database this often anyway: the bound on
# delivery when wake-ups are lost (SQLite files shared by replicas, a dropped LISTEN).
CATCH_UP_INTERVAL = 1.0
# Seconds of silence after which a stream that asked for heartbeats gets one: below the
# idle timeouts of common proxies and load balancers (30 to 60 s).
HEARTBEAT_INTERVAL = 15.0
REPLAY_BATCH = 500
# Stream reads running at once on one replica: a wake-up of many streams must not take
# every connection of the pool (or of the database server) at the same moment.
CONCURRENT_STREAM_READS = 4

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


def describe(event: OrderEvent) -> tuple[str, str]:
    """(title, body) of the notification for an order or payment event."""
    total = format_money(event.total_minor, event.currency)
    if event.kind == models.PAYMENT_REFUNDED:
        if event.voided:
            return (
                "Payment released",
                f"The {total} held for your cancelled order {event.order_id} has been"
                " released; nothing was charged.",
            )
        return (
            "Payment refunded",
            f"Your payment of {total} for order {event.order_id} has been refunded.",
        )
    if event.kind == models.PAYMENT_FAILED:
        if event.failure == models.DECLINED:
            why = f" ({event.decline_code.replace('_', ' ')})" if event.decline_code else ""
            return (
                "Payment declined",
                f"Your payment of {total} was declined{why}. No order was placed and"
                " nothing was charged.",
            )
        return (
            "Payment failed",
            f"Your payment of {total} could not be completed. No order was placed and"
            " nothing was charged; please try again.",
        )
    if event.kind == models.ORDER_PLACED:
        noun = "item" if event.item_count == 1 else "items"
        return (
            "Order placed",
            f"Your order {event.order_id} of {event.item_count} {noun} totalling {total}"
            " has been placed.",
        )
    reason = f" Reason: {event.cancel_reason}" if event.cancel_reason else ""
    return (
        "Order cancelled",
        f"Your order {event.order_id} has been cancelled; {total} will not be charged.{reason}",
    )


class Notifications:
    def __init__(
        self,
        repository: NotificationRepository,
        page_tokens: PageTokens,
        hub: Hub,
        *,
        catch_up_interval: float = CATCH_UP_INTERVAL,
        heartbeat_interval: float = HEARTBEAT_INTERVAL,
    ) -> None:
        self._repository = repository
        self._tokens = page_tokens
        self.hub = hub
        self._catch_up = catch_up_interval
        self._heartbeat = heartbeat_interval
        self._reads = asyncio.Semaphore(CONCURRENT_STREAM_READS)

    # -- from events ---------------------------------------------------------

    async def record(self, store: NotificationStore, event: OrderEvent) -> Callable[[], None]:
        """The event's notification for the order's user, numbered in the user's own
        sequence, stored in the event consumer's transaction (which applies each event
        once); returns what to run once that has committed: wake the user's streams."""
        title, body = describe(event)
        user_id = event.user_id
        # `loaded`, not the constructor (its attribute events cost more than the rest of
        # this method): the row goes to the store, never to an ORM session.
        await store.add(
            loaded(
                NotificationRow,
                {
                    "id": new_id("ntf"),
                    "user_id": user_id,
                    "kind": event.kind,
                    "title": title,
                    "body": body,
                    "order_id": event.order_id,
                    "event_id": event.event_id,
                    "read": False,
                    "create_time": utcnow(),
                    "read_time": None,
                },
            )
        )
        return lambda: self.hub.wake(user_id)

    # -- reading -------------------------------------------------------------

    async def list_page(
        self, user_id: str, unread_only: bool, requested_size: int | None, token: str
    ) -> tuple[Sequence[NotificationRow], str]:
        """One user's notifications, newest first."""
        size = page_size(requested_size)
        query_key = f"v2:user={user_id}&unread={unread_only}"
        before = self._tokens.decode(token, query_key)
        rows = await self._repository.page(
            user_id, unread_only, None if before is None else int(before), size + 1
        )
        return self._tokens.page(rows, size, key=lambda row: str(row.user_seq), query=query_key)

    async def mark_read(self, user_id: str, ids: Sequence[str]) -> Sequence[NotificationRow]:
        """All of `ids` (the user's) become read; NOT_FOUND, changing nothing, if any is
        not the user's. Marking a read one again keeps its read time."""
        try:
            return await self._repository.mark_read(user_id, ids, utcnow())
        except UnknownNotifications as unknown:
            raise NotFound("notification", *unknown.ids) from None

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
            return await self._repository.seq_of_legacy_cursor(user_id, int(legacy or 0))

    async def stream(self, user_id: str, cursor: str) -> AsyncGenerator[NotificationRow, None]:
        """`stream_with_heartbeats` without the heartbeats."""
        # aclosing: closing this stream closes the inner one at once (its subscription).
        async with contextlib.aclosing(
            self.stream_with_heartbeats(user_id, cursor, heartbeats=False)
        ) as rows:
            async for row in rows:
                if row is not None:
                    yield row

    async def stream_with_heartbeats(
        self, user_id: str, cursor: str, *, heartbeats: bool = True
    ) -> AsyncGenerator[NotificationRow | None, None]:
        """What the client has not seen (after its cursor; with none, what is unread),
        then each new notification, exactly once and in the user's order, whichever
        replica stored it. The database is read after each wake-up (from this replica,
        from another through the database's notifications, or a periodic look).

        With `heartbeats`, None (a heartbeat) first, as soon as the stream is open, and
        after every HEARTBEAT_INTERVAL seconds in which nothing was sent."""
        after = await self._resume_from(user_id, cursor)
        try:
            subscription = self.hub.subscribe(user_id)  # before reading: no wake-up is missed
        except StreamLimitReached:
            raise TooManyStreams() from None
        loop = asyncio.get_running_loop()
        try:
            if heartbeats:
                yield None
            sent = loop.time()
            if after is None:
                async with self._reads:
                    unread, last = await self._repository.unread(user_id)
                for row in unread:
                    yield row
            else:
                last = after
            while True:
                subscription.clear()
                async with self._reads:
                    rows = await self._repository.after(user_id, last, REPLAY_BATCH)
                for row in rows:
                    yield row
                    last = row.user_seq
                if rows:
                    sent = loop.time()
                elif heartbeats and loop.time() - sent >= self._heartbeat:
                    yield None
                    sent = loop.time()
                if len(rows) < REPLAY_BATCH:
                    await subscription.wait(min(self._catch_up, self._heartbeat))
        finally:
            self.hub.unsubscribe(subscription)


def _stream_key(user_id: str) -> str:
    return f"stream.v2:{user_id}"
