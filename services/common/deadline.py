"""The incoming call's deadline, kept in a context variable for outgoing calls.

The server deadline interceptor sets it for each RPC; `clients.OutgoingUnary`
reads it so that every call a handler makes carries the time that remains,
without the handler having to pass its context around.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Iterator
from contextlib import contextmanager

_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "shop_deadline", default=None
)


def set_deadline(time_remaining: float | None) -> contextvars.Token[float | None]:
    """Records the deadline `time_remaining` seconds from now (None: no deadline)."""
    deadline = None if time_remaining is None else time.monotonic() + time_remaining
    return _deadline.set(deadline)


def reset_deadline(token: contextvars.Token[float | None]) -> None:
    _deadline.reset(token)


def remaining() -> float | None:
    """Seconds left before the current call's deadline, or None when it has none."""
    deadline = _deadline.get()
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def outgoing_timeout(default: float | None = None) -> float | None:
    """The timeout for an outgoing call: what remains, capped by `default`."""
    left = remaining()
    if left is None:
        return default
    return left if default is None else min(left, default)


@contextmanager
def detached() -> Iterator[None]:
    """Outgoing calls made inside ignore the incoming deadline (for compensation,
    which must run even when the caller has given up)."""
    token = _deadline.set(None)
    try:
        yield
    finally:
        _deadline.reset(token)


@contextmanager
def at_most(seconds: float) -> Iterator[None]:
    """Outgoing calls made inside carry at most `seconds` from now (less when the
    incoming call has less left): a step bounded by a timeout of its own (an order
    attempt) leaves nothing running at its peers once that time is up."""
    left = remaining()
    token = set_deadline(seconds if left is None else min(left, seconds))
    try:
        yield
    finally:
        _deadline.reset(token)
