"""The batcher: alone a call goes at once; the calls made while one is on its way go
together in the next; errors and cancellations reach only the callers they concern."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Sequence

import pytest

from services.common.batching import Batcher


class Peer:
    """A batch call that answers key * 10, held open while `gate` is clear."""

    def __init__(self) -> None:
        self.calls: list[list[int]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail_next = False
        self.short_answer = False

    async def send(self, keys: Sequence[int]) -> list[int]:
        self.calls.append(list(keys))
        await self.gate.wait()
        if self.fail_next:
            self.fail_next = False
            raise ConnectionError("peer down")
        answer = [key * 10 for key in keys]
        return answer[:-1] if self.short_answer else answer


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_alone_a_call_goes_at_once() -> None:
    peer = Peer()
    batcher = Batcher(peer.send, most=100)
    assert await asyncio.wait_for(batcher.ask(1), 1) == 10
    assert await asyncio.wait_for(batcher.ask(2), 1) == 20
    assert peer.calls == [[1], [2]]
    assert (batcher.batches, batcher.keys) == (2, 2)


async def test_calls_made_while_one_is_on_its_way_go_together() -> None:
    peer = Peer()
    batcher = Batcher(peer.send, most=100)
    peer.gate.clear()
    first = asyncio.create_task(batcher.ask(1))
    await settle()
    assert peer.calls == [[1]]  # sent at once, not held for company
    later = [asyncio.create_task(batcher.ask(key)) for key in (2, 3, 4)]
    await settle()
    assert peer.calls == [[1]]  # waiting for the first to come back
    peer.gate.set()
    assert await asyncio.gather(first, *later) == [10, 20, 30, 40]
    assert peer.calls == [[1], [2, 3, 4]]


async def test_a_batch_takes_at_most_its_limit() -> None:
    peer = Peer()
    batcher = Batcher(peer.send, most=2)
    peer.gate.clear()
    tasks = [asyncio.create_task(batcher.ask(key)) for key in range(1, 7)]
    await settle()
    peer.gate.set()
    assert await asyncio.gather(*tasks) == [10, 20, 30, 40, 50, 60]
    assert peer.calls == [[1, 2], [3, 4], [5, 6]]


async def test_a_key_asked_twice_is_sent_once_and_both_callers_get_its_result() -> None:
    """A callee may refuse a batch with a key twice (CapturePayments' ids are distinct):
    a key asked again while the first ask waits goes once."""
    peer = Peer()
    batcher = Batcher(peer.send, most=2)
    peer.gate.clear()
    first = asyncio.create_task(batcher.ask(1))
    await settle()
    again = [asyncio.create_task(batcher.ask(key)) for key in (2, 2, 3, 2, 4)]
    await settle()
    assert batcher.queued == 5
    peer.gate.set()
    assert await asyncio.gather(first, *again) == [10, 20, 20, 30, 20, 40]
    assert peer.calls == [[1], [2, 3], [4]]  # at most two distinct keys a call
    assert (batcher.batches, batcher.keys, batcher.queued) == (3, 4, 0)


async def test_a_failed_batch_fails_its_callers_only() -> None:
    peer = Peer()
    batcher = Batcher(peer.send, most=100)
    peer.gate.clear()
    peer.fail_next = True
    doomed = asyncio.create_task(batcher.ask(1))
    await settle()
    spared = [asyncio.create_task(batcher.ask(key)) for key in (2, 3)]
    await settle()
    peer.gate.set()
    with pytest.raises(ConnectionError, match="peer down"):
        await doomed
    assert await asyncio.gather(*spared) == [20, 30]
    assert await batcher.ask(4) == 40  # and the batcher goes on


async def test_a_caller_that_gives_up_leaves_the_others_their_answers() -> None:
    peer = Peer()
    batcher = Batcher(peer.send, most=100)
    peer.gate.clear()
    first = asyncio.create_task(batcher.ask(1))
    await settle()
    impatient = asyncio.create_task(batcher.ask(2))
    patient = asyncio.create_task(batcher.ask(3))
    await settle()
    impatient.cancel()
    peer.gate.set()
    assert (await first, await patient) == (10, 30)
    assert impatient.cancelled()
    assert peer.calls == [[1], [2, 3]]  # its key was sent: the callee's work is idempotent


async def test_an_answer_of_the_wrong_length_fails_the_batch() -> None:
    peer = Peer()
    peer.short_answer = True
    batcher = Batcher(peer.send, most=100)
    with pytest.raises(RuntimeError, match="a batch of 1 keys answered 0 results"):
        await batcher.ask(1)


async def test_a_stopped_batcher_cancels_its_callers() -> None:
    peer = Peer()
    batcher = Batcher(peer.send, most=100)
    peer.gate.clear()
    first = asyncio.create_task(batcher.ask(1))
    await settle()
    queued = asyncio.create_task(batcher.ask(2))
    await settle()
    assert batcher._sender is not None
    batcher._sender.cancel()
    await settle()
    assert first.cancelled() and queued.cancelled()  # told, not left waiting for ever


async def test_a_batch_carries_none_of_its_callers_context() -> None:
    """A batch serves many callers: it must not run under the first one's deadline or
    trace (both live in context variables)."""
    caller_deadline: contextvars.ContextVar[str] = contextvars.ContextVar("deadline", default="")
    seen: list[str] = []

    async def send(keys: Sequence[int]) -> list[int]:
        seen.append(caller_deadline.get())
        return list(keys)

    batcher = Batcher(send, most=100)
    caller_deadline.set("the first caller's")
    assert await batcher.ask(7) == 7
    assert seen == [""]
