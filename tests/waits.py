"""Waiting on a condition instead of sleeping for a guess of how long it takes."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import Awaitable, Callable

Check = Callable[[], bool | Awaitable[bool]]


async def eventually(
    check: Check, what: str, *, within: float = 5.0, interval: float = 0.02, tolerate: bool = False
) -> float:
    """Polls `check` (plain or async) until it holds and returns the seconds it took; fails
    the test naming `what` if it does not hold within `within` seconds. With `tolerate`, a
    check that raises counts as not yet (a cluster mid-election, say)."""
    started = time.monotonic()
    while True:
        with contextlib.suppress(*((Exception,) if tolerate else ())):
            result = check()
            if inspect.isawaitable(result):
                result = await result
            if result:
                return time.monotonic() - started
        if time.monotonic() - started > within:
            raise AssertionError(f"{what}: not within {within} s")
        await asyncio.sleep(interval)
