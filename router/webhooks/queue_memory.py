"""In-memory queue (no ``store.url``): the same semantics as the Redis queue within one
process, lost on restart (``durable = False``). The dead list keeps the newest
``max_dead`` entries (memory is the limit here; the oldest are dropped and logged).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import deque
from collections.abc import Collection, Sequence
from typing import Any

from router.webhooks.base import LEASE_ACQUIRED, LEASE_RENEWED, Done
from router.webhooks.model import DeadRecord, Entry, InboundEvent

log = logging.getLogger(__name__)


class MemoryQueue:
    durable = False

    def __init__(self, consumer: str = "memory", *, max_dead: int = 10_000) -> None:
        self.consumer = consumer
        self._max_dead = max_dead
        self._seq = itertools.count(1)
        self._queues: dict[str, deque[Entry]] = {}
        self._held: dict[str, dict[str, Entry]] = {}  # read, not yet finished
        self._wake: dict[str, asyncio.Event] = {}
        self._dead: dict[str, DeadRecord] = {}  # insertion-ordered: oldest first
        self._leased: set[str] = set()
        self.dropped_dead = 0

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def _q(self, key: str) -> deque[Entry]:
        q = self._queues.get(key)
        if q is None:
            q = self._queues[key] = deque()
            self._held[key] = {}
            self._wake[key] = asyncio.Event()
        return q

    def _push(self, key: str, entry: Entry) -> None:
        self._q(key).append(entry)
        self._wake[key].set()

    def add(self, items: Sequence[tuple[str, InboundEvent]], done: Done) -> None:
        for key, ev in items:
            self._push(key, Entry(str(next(self._seq)), ev.id, ev.session, ev.event, ev.body, ev.received_at))
        done(None)

    async def prepare(self, key: str) -> None:
        self._q(key)

    async def read(self, key: str, count: int, block: float) -> list[Entry]:
        q = self._q(key)
        if not q:
            wake = self._wake[key]
            wake.clear()
            try:
                async with asyncio.timeout(block):
                    await wake.wait()
            except TimeoutError:
                return []
        out = [q.popleft() for _ in range(min(count, len(q)))]
        held = self._held[key]
        for e in out:
            held[e.qid] = e
        return out

    async def claim(self, key: str, min_idle: float, cursor: str, count: int) -> tuple[str, list[Entry]]:
        return "0-0", []  # one process: nobody else leaves entries behind

    async def touch(self, key: str, qids: Sequence[str]) -> None:
        return None

    async def release(self, key: str, qids: Sequence[str]) -> None:
        """Put entries back at the front, in their original order."""
        held = self._held.get(key, {})
        back = sorted((held.pop(q) for q in qids if q in held), key=lambda e: int(e.qid))
        q = self._q(key)
        for e in reversed(back):
            e.attempts, e.last_status, e.last_error = 0, None, None
            q.appendleft(e)
        if back:
            self._wake[key].set()

    async def finish(self, key: str, acks: Sequence[str], dead: Sequence[DeadRecord]) -> None:
        for d in dead:
            self._dead[f"m-{next(self._seq)}"] = d
        while len(self._dead) > self._max_dead:
            self._dead.pop(next(iter(self._dead)))
            self.dropped_dead += 1
            log.warning("webhooks: in-memory dead list full (%d), oldest entry dropped", self._max_dead)
        held = self._held.get(key, {})
        for qid in acks:
            held.pop(qid, None)

    async def trim(self, key: str) -> int:
        return 0

    async def lease(self, key: str, ttl: float) -> int:
        if key in self._leased:
            return LEASE_RENEWED
        self._leased.add(key)
        return LEASE_ACQUIRED

    async def unlease(self, key: str) -> None:
        self._leased.discard(key)

    async def backlog(self, keys: Sequence[str]) -> dict[str, int]:
        return {k: len(self._queues.get(k, ())) + len(self._held.get(k, {})) for k in keys}

    def pending_total(self, key: str | None = None) -> int:
        """Queued + held entries, of one target or all."""
        if key is not None:
            return len(self._queues.get(key, ())) + len(self._held.get(key, {}))
        return sum(len(q) for q in self._queues.values()) + sum(len(h) for h in self._held.values())

    async def dead(self, limit: int) -> list[dict[str, Any]]:
        items = list(self._dead.items())[::-1][: max(0, limit)]
        return [d.view(qid) for qid, d in items]

    async def replay(self, ids: Sequence[str] | None, keys: Collection[str]) -> int:
        chosen = list(self._dead) if ids is None else [i for i in ids if i in self._dead]
        moved = 0
        for dead_id in chosen:
            d = self._dead[dead_id]
            if d.target_key not in keys:
                continue
            del self._dead[dead_id]
            self._push(d.target_key, Entry(str(next(self._seq)), d.event_id, d.session, d.event, d.body, d.received_at))
            moved += 1
        return moved

    async def cleanup(self, key: str) -> None:
        return None
