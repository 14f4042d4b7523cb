"""Many callers, one round trip: calls made while a flush is in flight wait and go together
in the next one. Under load the batches grow by themselves; alone, a call goes at once (no
timer, no added latency)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Batcher(Generic[T, R]):
    def __init__(self, flush: Callable[[list[T]], Awaitable[list[R]]], *, max_items: int = 512,
                 in_flight: int = 2) -> None:
        self._flush = flush
        self._max_items = max_items
        self._in_flight = in_flight
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._flushers: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        return f"<Batcher pending={len(self._pending)} flushing={len(self._flushers)}>"

    async def __call__(self, item: T) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if len(self._flushers) < self._in_flight:
            task = asyncio.ensure_future(self._drain())
            self._flushers.add(task)
            task.add_done_callback(self._flushers.discard)
        return await future

    async def _drain(self) -> None:
        while self._pending:
            batch, self._pending = (self._pending[:self._max_items],
                                    self._pending[self._max_items:])
            try:
                results = await self._flush([item for item, _ in batch])
            except asyncio.CancelledError:  # shutting down: nobody gets an answer
                for _, future in batch:
                    future.cancel()
                raise
            except Exception as e:  # every caller of the batch gets the failure
                for _, future in batch:
                    if not future.done():
                        future.set_exception(e)
                continue
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():  # a caller that gave up (cancelled) no longer waits
                    future.set_result(result)

    async def close(self) -> None:
        """Wait for the flushes in flight (their callers are owed an answer)."""
        if self._flushers:
            await asyncio.gather(*self._flushers, return_exceptions=True)
