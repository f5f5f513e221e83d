"""Per-client limits at the edge: a request rate (token bucket) and open streams.

A client is its authenticated user when there is one, else its address. Over the
rate, the answer is RESOURCE_EXHAUSTED in the caller's protocol (HTTP 429 for
Connect and REST, grpc-status 8 for gRPC and gRPC-Web) with `Retry-After`, before
any service is called. The token bucket is written here (about 20 lines): the
`limits` package offers fixed and sliding windows, not a bucket, and the time to
the next token is what Retry-After needs.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from google.rpc import code_pb2
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.refusal import refuse

# Paths that are never limited: probes.
EXEMPT = ("/healthz",)
# The most clients remembered; the least recently seen are forgotten first.
MAX_CLIENTS = 100_000


@dataclass
class Bucket:
    tokens: float
    updated: float


class TokenBuckets:
    """`rate` tokens a second per key, at most `burst` saved up."""

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic):
        self.rate = rate
        self.burst = max(burst, 1.0)
        self._clock = clock
        self._buckets: OrderedDict[str, Bucket] = OrderedDict()

    def take(self, key: str) -> float:
        """Takes a token; returns 0 when allowed, else the seconds until one is due."""
        now = self._clock()
        bucket = self._buckets.pop(key, None) or Bucket(self.burst, now)
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
        bucket.updated = now
        self._buckets[key] = bucket
        if len(self._buckets) > MAX_CLIENTS:
            self._buckets.popitem(last=False)
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self.rate


def client_key(scope: Scope) -> str:
    user = scope.get("state", {}).get("user_id") if isinstance(scope.get("state"), dict) else None
    if user:
        return f"user:{user}"
    client = scope.get("client") or ("unknown", 0)
    return f"addr:{client[0]}"


class RateLimit:
    """ASGI middleware: the request rate per client, and the streams each may hold open."""

    def __init__(
        self,
        app: ASGIApp,
        rate: float,
        burst: float,
        max_streams: int,
        streaming_paths: Iterable[str] = (),
    ) -> None:
        self.app = app
        self.buckets = TokenBuckets(rate, burst) if rate > 0 else None
        self.max_streams = max_streams
        self.streaming = frozenset(streaming_paths)
        self.open_streams: dict[str, int] = {}

    def _is_stream(self, scope: Scope) -> bool:
        path = str(scope["path"])
        return path in self.streaming or path.endswith(":stream")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in EXEMPT:
            await self.app(scope, receive, send)
            return
        key = client_key(scope)
        if self.buckets is not None:
            wait = self.buckets.take(key)
            if wait > 0:
                retry = str(max(1, math.ceil(wait)))
                message = f"too many requests; retry in {retry} s"
                await refuse(
                    scope,
                    send,
                    code_pb2.RESOURCE_EXHAUSTED,
                    message,
                    {"retry-after": retry},
                    reason="RATE_LIMITED",
                )
                return
        if not self._is_stream(scope) or self.max_streams <= 0:
            await self.app(scope, receive, send)
            return
        if self.open_streams.get(key, 0) >= self.max_streams:
            message = f"at most {self.max_streams} open streams per client"
            await refuse(
                scope, send, code_pb2.RESOURCE_EXHAUSTED, message, reason="TOO_MANY_STREAMS"
            )
            return
        self.open_streams[key] = self.open_streams.get(key, 0) + 1
        try:
            await self.app(scope, receive, send)
        finally:
            left = self.open_streams[key] - 1
            if left:
                self.open_streams[key] = left
            else:
                del self.open_streams[key]
