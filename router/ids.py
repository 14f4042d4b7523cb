"""Ids that sort by time and are unique across processes (ULIDs)."""

from __future__ import annotations

import os
import time

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def ulid(ms: int | None = None) -> str:
    """A 26-character ULID: 48-bit millisecond time + 80 random bits, Crockford base32."""
    value = ((int(time.time() * 1000) if ms is None else ms) & (2**48 - 1)) << 80
    value |= int.from_bytes(os.urandom(10), "big")
    out = []
    for _ in range(26):
        out.append(_CROCKFORD[value & 31])
        value >>= 5
    return "".join(reversed(out))
