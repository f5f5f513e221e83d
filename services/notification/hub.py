"""Live fan-out of new notifications to open streams, with bounded memory.

Each subscriber gets a queue of at most `queue_size` notifications. A subscriber
that falls that far behind (a slow or stuck client) is marked overflowed instead
of blocking the publisher or growing: its stream ends with RESOURCE_EXHAUSTED,
and the client resumes from its last cursor, replaying the rest from the
database, so nothing is lost.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict

from services.notification.models import NotificationRow


class Subscription:
    def __init__(self, user_id: str, queue_size: int) -> None:
        self.user_id = user_id
        self.queue: asyncio.Queue[NotificationRow] = asyncio.Queue(queue_size)
        self.overflowed = False

    def offer(self, notification: NotificationRow) -> None:
        if self.overflowed:
            return
        try:
            self.queue.put_nowait(notification)
        except asyncio.QueueFull:
            self.overflowed = True

    async def next(self, timeout: float) -> NotificationRow | None:
        """The next pushed notification, or None after `timeout` seconds without one."""
        try:
            return await asyncio.wait_for(self.queue.get(), timeout)
        except TimeoutError:
            return None


class StreamLimitReached(Exception):
    pass


class Hub:
    def __init__(self, queue_size: int = 256, max_streams: int = 10_000) -> None:
        self._queue_size = queue_size
        self._max_streams = max_streams
        self._by_user: defaultdict[str, set[Subscription]] = defaultdict(set)
        self.open_streams = 0

    def subscribe(self, user_id: str) -> Subscription:
        if self.open_streams >= self._max_streams:
            raise StreamLimitReached
        subscription = Subscription(user_id, self._queue_size)
        self._by_user[user_id].add(subscription)
        self.open_streams += 1
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        subscribers = self._by_user.get(subscription.user_id)
        if subscribers is not None and subscription in subscribers:
            subscribers.discard(subscription)
            self.open_streams -= 1
            if not subscribers:
                del self._by_user[subscription.user_id]

    def publish(self, notifications: list[NotificationRow]) -> None:
        for notification in notifications:
            for subscription in self._by_user.get(notification.user_id, ()):
                subscription.offer(notification)
