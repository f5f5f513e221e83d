"""Wake-ups for open notification streams.

A stream reads its notifications from the database, which is the one source of
truth whichever replica stored them; the hub only tells it when to look again.
A wake-up carries no data, so a slow or stuck client holds no queue: it reads
from the database at its own pace, and memory stays bounded by the batch size.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict


class Subscription:
    def __init__(self, user_id: str) -> None:
        self.user_id = user_id
        self._news = asyncio.Event()

    def wake(self) -> None:
        self._news.set()

    def clear(self) -> None:
        """Call before reading: a wake-up that comes after it is not lost."""
        self._news.clear()

    async def wait(self, timeout: float) -> None:
        """Until woken, or `timeout` seconds (the stream then looks anyway)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._news.wait(), timeout)


class StreamLimitReached(Exception):
    pass


class Hub:
    def __init__(self, max_streams: int = 10_000) -> None:
        self._max_streams = max_streams
        self._by_user: defaultdict[str, set[Subscription]] = defaultdict(set)
        self.open_streams = 0

    def subscribe(self, user_id: str) -> Subscription:
        if self.open_streams >= self._max_streams:
            raise StreamLimitReached
        subscription = Subscription(user_id)
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

    def wake(self, user_id: str) -> None:
        """The user has news: every stream of theirs on this replica looks again."""
        for subscription in self._by_user.get(user_id, ()):
            subscription.wake()
