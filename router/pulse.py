"""``Pulse``: one wake-up for everything that waits on routing to change."""

from __future__ import annotations

import asyncio

from router.clock import Clock, LoopClock


class Pulse:
    """Wakes every waiter when routing may have changed (an instance came up or went
    down, a session moved or became ready). Waiters re-check their own condition."""

    __slots__ = ("_clock", "_waiter")

    def __init__(self, clock: Clock | None = None) -> None:
        self._clock = clock or LoopClock()
        self._waiter: asyncio.Future[None] | None = None

    def __repr__(self) -> str:
        return f"<Pulse waiting={self._waiter is not None}>"

    def fire(self) -> None:
        w = self._waiter
        if w is not None:
            self._waiter = None
            if not w.done():
                w.set_result(None)

    async def wait(self, timeout: float) -> None:
        """Until the next ``fire`` or ``timeout`` seconds (of the injected clock)."""
        if self._waiter is None:
            self._waiter = asyncio.get_running_loop().create_future()
        await self._clock.wait(asyncio.shield(self._waiter), timeout)
