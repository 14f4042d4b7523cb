"""Background tasks: one supervisor for every component's loops and one-off jobs.

``Tasks`` owns a component's tasks: ``spawn`` starts one (optionally under a key, so it
can be cancelled alone), a failure is logged and never kills the loop that spawned it,
``stop`` cancels them all and waits, bounded, so a task that swallows its cancellation
cannot hang a shutdown.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Hashable, Iterable
from typing import Any

from router.errors import RouterError

log = logging.getLogger("wa_router.tasks")


async def cancel_and_wait(tasks: Iterable[asyncio.Task[Any] | None], timeout: float = 1.0) -> None:
    """Cancel and wait, bounded: a task that swallowed its cancellation (Python 3.11's
    ``asyncio.timeout`` can turn a cancel that races its deadline into ``TimeoutError``)
    cannot hang a stop; the loops also test their stop flags."""
    live = [t for t in tasks if t is not None and not t.done()]
    for t in live:
        t.cancel()
    if live:
        await asyncio.wait(live, timeout=timeout)


class Tasks:
    """The background tasks of one component."""

    __slots__ = ("_keyed", "_stopping", "_tasks", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self._tasks: set[asyncio.Task[None]] = set()
        self._keyed: dict[Hashable, asyncio.Task[None]] = {}
        self._stopping = False

    def __repr__(self) -> str:
        return f"<Tasks {self.name}: {len(self._tasks)} running, keys={list(self._keyed)!r}>"

    def __len__(self) -> int:
        return len(self._tasks)

    def spawn(self, coro: Coroutine[Any, Any, object], *, key: Hashable | None = None,
              name: str | None = None) -> asyncio.Task[None] | None:
        """Run ``coro`` in the background; None (and ``coro`` closed) once stopping.
        With ``key``: replaces nothing, see ``running``; ``cancel(key)`` stops it alone."""
        if self._stopping:
            coro.close()
            return None
        task = asyncio.get_running_loop().create_task(
            self._guard(coro), name=name or f"{self.name}:{getattr(coro, '__name__', 'task')}"
        )
        self._tasks.add(task)
        if key is not None:
            self._keyed[key] = task
        task.add_done_callback(lambda t: self._done(t, key, coro))
        return task

    def _done(self, task: asyncio.Task[None], key: Hashable | None,
              coro: Coroutine[Any, Any, object]) -> None:
        self._tasks.discard(task)
        if key is not None and self._keyed.get(key) is task:
            del self._keyed[key]
        # Cancelled before it ever ran: close the coroutine (no "never awaited" warning).
        coro.close()

    async def _guard(self, coro: Coroutine[Any, Any, object]) -> None:
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except RouterError as e:
            log.warning("%s: %s", self.name, e.message)
        except Exception:
            log.exception("%s: background task failed", self.name)

    def running(self, key: Hashable) -> bool:
        task = self._keyed.get(key)
        return task is not None and not task.done()

    def cancel(self, key: Hashable) -> None:
        task = self._keyed.pop(key, None)
        if task is not None:
            task.cancel()

    def abort(self) -> None:
        """Cancel every task without waiting (what a crash leaves behind, in tests)."""
        self._stopping = True
        for task in self._tasks:
            task.cancel()

    async def stop(self, timeout: float = 1.0) -> None:
        """Cancel every task and wait for them (at most ``timeout``); no new ones after."""
        self._stopping = True
        await cancel_and_wait(list(self._tasks), timeout)
