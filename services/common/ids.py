"""Opaque, sortable ids: a prefix, then 48 bits of time and 80 random bits.

Written by hand (ten lines) rather than taking a ULID package: the format is
ULID's Crockford base32, but with a type prefix, and nothing else is needed.
The time part keeps ids roughly in creation order, which keyset pagination
uses; the random part makes them unguessable and unique across replicas.
"""

from __future__ import annotations

import os
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_id(prefix: str) -> str:
    """Returns e.g. ``usr_01JD3K8Q9X4T7B2N5M6P8R0S1V``."""
    value = (time.time_ns() // 1_000_000) << 80 | int.from_bytes(os.urandom(10), "big")
    chars = []
    for _ in range(26):
        value, digit = divmod(value, 32)
        chars.append(_ALPHABET[digit])
    return f"{prefix}_{''.join(reversed(chars))}"
