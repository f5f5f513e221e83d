"""Calls to a peer batched the way a database batches commits: the first call goes at
once, and the calls made while it is on its way go together in the next one.

Alone, a call waits for nothing; under load, N callers share one round trip (one gRPC
call, and what the callee can share of its work) instead of making N, and the batch
grows with the load by itself, without a timer to tune. Used by the order service for the
captures of the orders it places (`CapturePayments`).

Written here rather than taken from a library: the data loaders on PyPI batch the
keys asked for in one turn of the event loop, which under steady load are one or two;
this waits for the round trip in flight, which is where the keys pile up.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Generic, TypeVar

Key = TypeVar("Key", bound=Hashable)
Result = TypeVar("Result")


class Batcher(Generic[Key, Result]):
    """`await batcher.ask(key)`: `send(keys)`'s result for `key`, where `send` takes up
    to `most` distinct keys and answers one result per key, in their order (a key asked
    twice is sent once, and both callers get its result). If `send` raises, every caller
    of that batch gets the error."""

    def __init__(
        self, send: Callable[[Sequence[Key]], Awaitable[Sequence[Result]]], most: int
    ) -> None:
        self._send = send
        self._most = most
        self._waiting: list[tuple[Key, asyncio.Future[Result]]] = []
        self._sender: asyncio.Task[None] | None = None
        # How many `send` calls there were, and for how many keys (for tests and metrics).
        self.batches = 0
        self.keys = 0

    async def ask(self, key: Key) -> Result:
        answer: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._waiting.append((key, answer))
        if self._sender is None or self._sender.done():
            # In a context of its own: a batch serves many callers, so it takes none's
            # deadline or trace (`send` sets what its call carries).
            self._sender = asyncio.create_task(self._send_all(), context=contextvars.Context())
        return await answer

    @property
    def queued(self) -> int:
        """How many calls wait for the batch on its way to come back."""
        return len(self._waiting)

    def _next_batch(self) -> tuple[list[Key], list[tuple[Key, asyncio.Future[Result]]]]:
        """The next `most` distinct keys, and the calls that asked for them."""
        keys: dict[Key, None] = {}
        taken = 0
        for key, _ in self._waiting:
            if key not in keys:
                if len(keys) == self._most:
                    break
                keys[key] = None
            taken += 1
        batch, self._waiting = self._waiting[:taken], self._waiting[taken:]
        return list(keys), batch

    async def _send_all(self) -> None:
        try:
            while self._waiting:
                keys, batch = self._next_batch()
                self.batches += 1
                self.keys += len(keys)
                try:
                    answers = await self._send(keys)
                    if len(answers) != len(keys):
                        raise RuntimeError(
                            f"a batch of {len(keys)} keys answered {len(answers)} results"
                        )
                    results = dict(zip(keys, answers, strict=True))
                except Exception as error:
                    for _, answer in batch:
                        if not answer.done():  # a caller that gave up is not told
                            answer.set_exception(error)
                    continue
                except BaseException:  # cancelled (the service stops): so are its callers
                    for _, answer in batch:
                        answer.cancel()
                    raise
                for key, answer in batch:
                    if not answer.done():
                        answer.set_result(results[key])
        finally:
            self._sender = None
            for _, answer in self._waiting:  # cancelled with keys still queued
                answer.cancel()
            self._waiting = []
