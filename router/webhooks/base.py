"""The queue interface the relay and its workers use; Redis and memory implement it.

Every method may raise ``router.errors.StoreUnavailable`` (Redis down or refusing); the
workers back off and try again, ``accept`` passes it to the receiver (503).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import Any, Protocol

from router.webhooks.model import DeadRecord, Entry, InboundEvent

# lease() answers
LEASE_OTHER = 0  # another consumer holds it
LEASE_RENEWED = 1  # we held it and still do
LEASE_ACQUIRED = 2  # we just took it: claim what the previous holder left first

# Called once when an add is stored (None) or failed (the error, usually StoreUnavailable).
Done = Callable[[BaseException | None], None]


class Queue(Protocol):
    durable: bool
    consumer: str

    async def open(self) -> None:
        """Connect (never raises: a Redis that is down is retried by the callers)."""

    async def close(self) -> None: ...

    def add(self, items: Sequence[tuple[str, InboundEvent]], done: Done) -> None:
        """Store each (target key, event); ``done`` is called once they are durably stored
        (or could not be), possibly before ``add`` returns."""

    async def prepare(self, key: str) -> None:
        """Create the target's queue (stream + consumer group) if missing."""

    async def read(self, key: str, count: int, block: float) -> list[Entry]:
        """New entries for this consumer, waiting up to ``block`` seconds for some."""

    async def claim(self, key: str, min_idle: float, cursor: str, count: int) -> tuple[str, list[Entry]]:
        """Take over entries other consumers left pending for ``min_idle`` seconds, in id
        order, one page from ``cursor``; returns the next cursor ("0-0" when done)."""

    async def touch(self, key: str, qids: Sequence[str]) -> None:
        """Reset the idle time of entries this consumer still works on."""

    async def release(self, key: str, qids: Sequence[str]) -> None:
        """Hand entries back so another consumer may take them at once."""

    async def finish(self, key: str, acks: Sequence[str], dead: Sequence[DeadRecord]) -> None:
        """Write ``dead`` to the dead list and acknowledge ``acks``, atomically."""

    async def trim(self, key: str) -> int:
        """Drop entries that are neither pending nor unread; returns how many."""

    async def lease(self, key: str, ttl: float) -> int:
        """Take or renew the target's delivery lease (``LEASE_*``)."""

    async def unlease(self, key: str) -> None: ...

    async def backlog(self, keys: Sequence[str]) -> dict[str, int]:
        """Undelivered entries (unread + pending) per target key."""

    async def dead(self, limit: int) -> list[dict[str, Any]]:
        """Dead entries, newest first (``DeadRecord.view`` shape)."""

    async def replay(self, ids: Sequence[str] | None, keys: Collection[str]) -> int:
        """Move dead entries (all, or these ids) whose target key is in ``keys`` back to
        their target's queue; returns how many moved."""

    async def cleanup(self, key: str) -> None:
        """Housekeeping: forget consumers long gone."""
