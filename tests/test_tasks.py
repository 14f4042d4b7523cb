"""router.tasks.Tasks: the one supervisor of background tasks."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import pytest

from router.errors import UpstreamError
from router.tasks import Tasks


async def test_failures_are_logged_and_do_not_escape(caplog: pytest.LogCaptureFixture) -> None:
    tasks = Tasks("t")

    async def boom() -> None:
        raise ValueError("boom")

    async def refused() -> None:
        raise UpstreamError("instance refused")

    with caplog.at_level(logging.WARNING, "wa_router.tasks"):
        a, b = tasks.spawn(boom()), tasks.spawn(refused())
        await asyncio.wait([t for t in (a, b) if t is not None])
    assert len(tasks) == 0
    assert "background task failed" in caplog.text and "instance refused" in caplog.text


async def test_stop_is_bounded_even_if_a_task_swallows_cancellation() -> None:
    tasks = Tasks("t")
    stubborn_ran = asyncio.Event()

    async def stubborn() -> None:
        with contextlib.suppress(asyncio.CancelledError):  # swallows the first cancel
            stubborn_ran.set()
            await asyncio.sleep(3600)
        await asyncio.sleep(3600)

    task = tasks.spawn(stubborn())
    await stubborn_ran.wait()
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await tasks.stop(timeout=0.05)
    assert loop.time() - t0 < 1.0
    assert task is not None and not task.done()  # still alive: stop did not wait for it
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_keyed_tasks_cancel_alone_and_nothing_starts_after_stop() -> None:
    tasks = Tasks("t")
    a = tasks.spawn(asyncio.sleep(3600), key="a")
    b = tasks.spawn(asyncio.sleep(3600), key="b")
    assert tasks.running("a") and tasks.running("b")
    tasks.cancel("a")
    await asyncio.sleep(0)
    assert a is not None and a.cancelled() and not tasks.running("a") and tasks.running("b")
    await tasks.stop()
    assert b is not None and b.cancelled()
    coro = asyncio.sleep(1)
    assert tasks.spawn(coro) is None  # closed, never started: no "never awaited" warning
    assert "keys=[]" in repr(tasks)
