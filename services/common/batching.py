"""Calls to a peer batched the way a database batches commits: the first call goes at
once, and the calls made while it is on its way go together in the next one.

Alone, a call waits for nothing; under load, N callers share one round trip (one gRPC
call and one transaction on each side) instead of making N, and the batch grows with
the load by itself, without a timer to tune. Used by the order service for the
captures of the orders it places (`CapturePayments`).

Written here rather than taken from a library: the data loaders on PyPI batch the
keys asked for in one turn of the event loop, which under steady load are one or two;
this waits for the round trip in flight, which is where the keys pile up.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

Key = TypeVar("Key")
Result = TypeVar("Result")


class Batcher(Generic[Key, Result]):
    """`await batcher.ask(key)`: `send(keys)`'s result for `key`, where `send` takes up
    to `most` keys and answers one result per key, in their order. If `send` raises,
    every caller of that batch gets the error."""

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
        if self._sender is None:
            # In a context of its own: a batch serves many callers, so it takes none's
            # deadline or trace (`send` sets what its call carries).
            self._sender = asyncio.create_task(self._send_all(), context=contextvars.Context())
        return await answer

    async def _send_all(self) -> None:
        try:
            while self._waiting:
                batch, self._waiting = self._waiting[: self._most], self._waiting[self._most :]
                self.batches += 1
                self.keys += len(batch)
                try:
                    results = await self._send([key for key, _ in batch])
                    if len(results) != len(batch):
                        raise RuntimeError(
                            f"a batch of {len(batch)} keys answered {len(results)} results"
                        )
                except Exception as error:
                    for _, answer in batch:
                        if not answer.done():  # a caller that gave up is not told
                            answer.set_exception(error)
                    continue
                except BaseException:  # cancelled (the service stops): so are its callers
                    for _, answer in batch:
                        answer.cancel()
                    raise
                for (_, answer), result in zip(batch, results, strict=True):
                    if not answer.done():
                        answer.set_result(result)
        finally:
            self._sender = None
            for _, answer in self._waiting:  # cancelled with keys still queued
                answer.cancel()
            self._waiting = []
