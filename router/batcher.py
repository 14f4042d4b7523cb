"""Coalesce concurrent writes into one round trip (the webhook relay's accepts, the
outbox's adds and turn writes).

``put(items, done)`` calls ``done(None)`` once a flush containing ``items`` succeeded, or
``done(error)`` with what the flush raised; ``submit(items)`` is the awaitable form. The
webhook receiver uses ``put``: no task or future per request on the accept path. One flush
runs at a time: callers that arrive while it is in flight join the next one, so under load
a batch is whatever accumulated during one round trip (no timer, no added latency when
idle). A flush takes whole callers (at least one) while it stays within ``max_items`` items
and ``max_bytes`` (by ``size``; bounds one Redis command). Calls that need an answer each
use ``Answered``.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
A = TypeVar("A")
R = TypeVar("R")
Done = Callable[[BaseException | None], None]


class Batcher(Generic[T]):
    def __init__(
        self,
        flush: Callable[[list[T]], Awaitable[None]],
        *,
        max_items: int = 1024,
        max_bytes: int | None = None,
        size: Callable[[T], int] | None = None,
        name: str = "webhook-batcher",
    ) -> None:
        self._name = name
        self._flush = flush
        self._max = max_items
        self._max_bytes = max_bytes
        self._size = size
        self._queue: deque[tuple[Sequence[T], int, Done]] = deque()
        self._task: asyncio.Task[None] | None = None
        self.flushes = 0  # round trips made (for tests and benchmarks)

    def put(self, items: Sequence[T], done: Done) -> None:
        """Queue ``items`` for the next flush; ``done`` is called exactly once, from the
        flush task (never from inside ``put``)."""
        nbytes = sum(map(self._size, items)) if self._size is not None else 0
        self._queue.append((items, nbytes, done))
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name=self._name)

    async def submit(self, items: Sequence[T]) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.put(items, lambda e: settle(fut, e))
        # A caller that gives up (cancelled) does not cancel the shared flush.
        await asyncio.shield(fut)

    async def _run(self) -> None:
        while self._queue:
            # Let callers already scheduled in this loop iteration join the batch.
            await asyncio.sleep(0)
            batch: list[T] = []
            waiters: list[Done] = []
            total = 0
            while self._queue and (not batch or self._fits(len(batch), total, self._queue[0])):
                items, nbytes, done = self._queue.popleft()
                batch.extend(items)
                total += nbytes
                waiters.append(done)
            self.flushes += 1
            error: BaseException | None = None
            try:
                await self._flush(batch)
            except asyncio.CancelledError as e:
                error = e
                raise
            except Exception as e:
                error = e
            finally:
                for done in waiters:
                    try:
                        done(error)
                    except Exception:  # one caller's bug must not strand the others
                        log.exception("%s: completion callback failed", self._name)

    def _fits(self, count: int, nbytes: int, nxt: tuple[Sequence[T], int, Done]) -> bool:
        if count + len(nxt[0]) > self._max:
            return False
        return self._max_bytes is None or nbytes + nxt[1] <= self._max_bytes

    async def close(self) -> None:
        """Wait for the flush in flight and those queued (callers get their answers)."""
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)


class Answered(Generic[A, R]):
    """Calls with an answer each over a ``Batcher``: ``await answered(args)`` queues
    ``(args, future)``; ``flush`` gets the args of a whole batch and returns one answer per
    call, in order."""

    def __init__(self, flush: Callable[[list[A]], Awaitable[Sequence[R]]], *, max_items: int,
                 name: str) -> None:
        self._flush = flush
        self.batcher: Batcher[tuple[A, asyncio.Future[R]]] = Batcher(self._run, max_items=max_items,
                                                                      name=name)

    async def __call__(self, args: A) -> R:
        fut: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        await self.batcher.submit([(args, fut)])
        return fut.result()

    async def _run(self, calls: list[tuple[A, asyncio.Future[R]]]) -> None:
        answers = await self._flush([args for args, _ in calls])
        for (_, fut), answer in zip(calls, answers, strict=True):
            if not fut.done():
                fut.set_result(answer)


def settle(fut: asyncio.Future[None], error: BaseException | None) -> None:
    """A ``Done`` that completes ``fut`` (the awaitable forms of ``put``-style calls)."""
    if fut.done():
        return
    if error is None:
        fut.set_result(None)
    elif isinstance(error, asyncio.CancelledError):
        fut.cancel()
    else:
        fut.set_exception(error)
        fut.exception()  # retrieved: no "never retrieved" warning if the caller left
