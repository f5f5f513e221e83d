"""Runs a process's main coroutine on uvloop, the faster event loop, unless told not to.

SHOP_EVENT_LOOP=asyncio selects the standard loop, for debugging or for a platform
uvloop does not support (`make bench` measures what uvloop buys).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    if os.environ.get("SHOP_EVENT_LOOP", "uvloop") == "uvloop":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.run(main)
    return asyncio.run(main)
