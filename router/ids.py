"""Ids that sort by time and are unique across processes (ULIDs)."""

from __future__ import annotations

import os
import time

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_PAIRS = [a + b for a in _CROCKFORD for b in _CROCKFORD]
_SHIFTS = tuple(range(120, -1, -10))
_RANDOM_MAX = 2**80 - 1
_last = (0, 0)  # (milliseconds, random part) of the last ULID made here


def ulid(ms: int | None = None) -> str:
    """A 26-character ULID: 48-bit millisecond time + 80 random bits, Crockford base32.

    Monotonic within this process (the ULID spec's monotonic mode): in the same millisecond
    (or if the clock steps back) the random part of the last one plus one, so ids made one
    after another sort in that order. Queues rely on it: messages due at the same moment go
    out in the order their ids were made."""
    global _last
    if ms is not None:  # a given time (events of the past): random, and not remembered
        return _encode((ms & (2**48 - 1)) << 80 | int.from_bytes(os.urandom(10), "big"))
    now = int(time.time() * 1000) & (2**48 - 1)
    last_ms, last_random = _last
    if now <= last_ms and last_random < _RANDOM_MAX:
        now, random = last_ms, last_random + 1
    else:
        random = int.from_bytes(os.urandom(10), "big")
    _last = (now, random)
    return _encode(now << 80 | random)


def _encode(value: int) -> str:
    # Two digits (10 bits) at a time from a table: 13 lookups for the 130-bit number.
    return "".join([_PAIRS[value >> shift & 1023] for shift in _SHIFTS])


_FROM_CROCKFORD = str.maketrans(_CROCKFORD, "0123456789abcdefghijklmnopqrstuv")


def ulid_ms(value: str) -> int:
    """The millisecond time a ULID was made (its first 10 characters)."""
    return int(value[:10].translate(_FROM_CROCKFORD), 32)

