"""Time for the control plane, injected: the event loop's clock in production, a manual one
in component tests (tests/fakes.py), so failover, drains and leases run without sleeps."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Monotonic seconds."""
        ...

    def wall(self) -> float:
        """Unix seconds: for times stored and shared between processes (the outbox)."""
        ...

    async def sleep(self, seconds: float) -> None: ...

    async def wait(self, aw: Awaitable[object], timeout: float) -> bool:
        """Await ``aw`` for at most ``timeout`` seconds: True if it finished (its task is
        cancelled otherwise)."""
        ...


class LoopClock:
    """The running event loop's clock."""

    def __repr__(self) -> str:
        return "<LoopClock>"

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    def wall(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    async def wait(self, aw: Awaitable[object], timeout: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(aw, max(0.0, timeout))
            return True
        return False
