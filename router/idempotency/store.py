"""Where kept responses live: the protocol, and the in-memory store (one process: keys are
not shared with other routers or workers; the Redis store shares them)."""

from __future__ import annotations

from typing import Protocol

from router.clock import Clock
from router.idempotency.model import Record


class KeyStore(Protocol):
    async def claim(self, digest: str, record: Record, ttl: float) -> Record | None:
        """Store ``record`` (in flight) under ``digest`` unless the key holds one already;
        None when it was claimed, else what the key holds."""
        ...

    def keep(self, digest: str, record: Record, ttl: float) -> None:
        """The request's outcome, kept for ``ttl`` seconds (replaces the claim). Written in
        the background: if it fails, the claim stays and turns ``outcome_unknown`` once old
        (never a second send)."""
        ...

    def release(self, digest: str) -> None:
        """The request provably never reached an instance: the key is free again (in the
        background, as ``keep``)."""
        ...


class MemoryKeys:
    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._keys: dict[str, tuple[Record, float]] = {}  # digest -> (record, expires)
        self._sweep_at = 0.0

    def __repr__(self) -> str:
        return f"<MemoryKeys {len(self._keys)} keys>"

    def _sweep(self, now: float) -> None:
        if now < self._sweep_at:
            return
        self._sweep_at = now + 60.0
        for digest in [d for d, (_, expires) in self._keys.items() if expires <= now]:
            del self._keys[digest]

    async def claim(self, digest: str, record: Record, ttl: float) -> Record | None:
        now = self._clock.now()
        self._sweep(now)
        found = self._keys.get(digest)
        if found is not None and found[1] > now:
            return found[0]
        self._keys[digest] = (record, now + ttl)
        return None

    def keep(self, digest: str, record: Record, ttl: float) -> None:
        self._keys[digest] = (record, self._clock.now() + ttl)

    def release(self, digest: str) -> None:
        self._keys.pop(digest, None)
