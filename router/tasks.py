"""Task helpers shared by the background loops."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any


async def cancel_and_wait(tasks: Iterable[asyncio.Task[Any] | None], timeout: float = 1.0) -> None:
    """Cancel and wait, bounded: a task that swallowed its cancellation (Python 3.11's
    ``asyncio.timeout`` can turn a cancel that races its deadline into ``TimeoutError``)
    cannot hang a stop; the loops also test their stop flags."""
    live = [t for t in tasks if t is not None and not t.done()]
    for t in live:
        t.cancel()
    if live:
        await asyncio.wait(live, timeout=timeout)
