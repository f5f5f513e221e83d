"""Opaque page tokens for keyset pagination.

A token carries the sort key of the last row returned and a fingerprint of the
query it belongs to, signed with HMAC so that a forged or altered token (or one
from another query) is refused as INVALID_ARGUMENT instead of silently
returning the wrong page.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable, Sequence
from typing import TypeVar

from services.common.errors import InvalidArgument

Row = TypeVar("Row")

DEFAULT_PAGE_SIZE = 50
_MAC_BYTES = 16


class PageTokens:
    def __init__(self, secret: str) -> None:
        self._key = secret.encode()

    def _mac(self, payload: bytes) -> bytes:
        return hmac.new(self._key, payload, hashlib.sha256).digest()[:_MAC_BYTES]

    def encode(self, last_key: str, query: str = "") -> str:
        payload = json.dumps({"k": last_key, "q": query}, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(self._mac(payload) + payload).decode().rstrip("=")

    def page(
        self, rows: Sequence[Row], size: int, key: Callable[[Row], str], query: str = ""
    ) -> tuple[Sequence[Row], str]:
        """Cuts `rows` (fetched with limit size + 1) to one page and its next_page_token."""
        if len(rows) <= size:
            return rows, ""
        rows = rows[:size]
        return rows, self.encode(key(rows[-1]), query)

    def decode(self, token: str, query: str = "", *, field: str = "page_token") -> str | None:
        """The last key of the previous page, or None for the first page."""
        if not token:
            return None
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            mac, payload = raw[:_MAC_BYTES], raw[_MAC_BYTES:]
            if not hmac.compare_digest(mac, self._mac(payload)):
                raise ValueError("bad signature")
            body = json.loads(payload)
            if body["q"] != query or not isinstance(body["k"], str):
                raise ValueError("token of another query")
            return str(body["k"])
        except (ValueError, KeyError, TypeError):
            raise InvalidArgument.of(
                field, "was not returned by this list or stream", f"{field}.invalid"
            ) from None


def page_size(requested: int | None) -> int:
    return requested if requested else DEFAULT_PAGE_SIZE
