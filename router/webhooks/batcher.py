"""Coalesce concurrent writes into one round trip.

``submit(items)`` returns once a flush containing ``items`` succeeded (or raises what the
flush raised). One flush runs at a time: callers that arrive while it is in flight join the
next one, so under load a batch is whatever accumulated during one round trip (no timer,
no added latency when idle). A flush takes whole callers (at least one) while it stays
within ``max_items`` items and ``max_bytes`` (by ``size``; bounds one Redis command).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")


class Batcher(Generic[T]):
    def __init__(
        self,
        flush: Callable[[list[T]], Awaitable[None]],
        *,
        max_items: int = 1024,
        max_bytes: int | None = None,
        size: Callable[[T], int] | None = None,
    ) -> None:
        self._flush = flush
        self._max = max_items
        self._max_bytes = max_bytes
        self._size = size
        self._queue: deque[tuple[Sequence[T], int, asyncio.Future[None]]] = deque()
        self._task: asyncio.Task[None] | None = None
        self.flushes = 0  # round trips made (for tests and benchmarks)

    async def submit(self, items: Sequence[T]) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        nbytes = sum(map(self._size, items)) if self._size is not None else 0
        self._queue.append((items, nbytes, fut))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="webhook-batcher")
        # A caller that gives up (cancelled) does not cancel the shared flush.
        await asyncio.shield(fut)

    async def _run(self) -> None:
        while self._queue:
            # Let callers already scheduled in this loop iteration join the batch.
            await asyncio.sleep(0)
            batch: list[T] = []
            waiters: list[asyncio.Future[None]] = []
            total = 0
            while self._queue and (not batch or self._fits(len(batch), total, self._queue[0])):
                items, nbytes, fut = self._queue.popleft()
                batch.extend(items)
                total += nbytes
                waiters.append(fut)
            self.flushes += 1
            try:
                await self._flush(batch)
            except asyncio.CancelledError:
                for fut in waiters:
                    if not fut.done():
                        fut.cancel()
                raise
            except Exception as e:
                for fut in waiters:
                    if not fut.done():
                        fut.set_exception(e)
                        fut.exception()  # retrieved: no "never retrieved" warning if the caller left
            else:
                for fut in waiters:
                    if not fut.done():
                        fut.set_result(None)

    def _fits(self, count: int, nbytes: int, nxt: tuple[Sequence[T], int, asyncio.Future[None]]) -> bool:
        if count + len(nxt[0]) > self._max:
            return False
        return self._max_bytes is None or nbytes + nxt[1] <= self._max_bytes

    async def close(self) -> None:
        """Wait for the flush in flight and those queued (callers get their answers)."""
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
