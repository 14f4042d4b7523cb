"""``listen.workers: N``: N router processes sharing the listening port (SO_REUSEPORT).

The master only supervises: it starts the workers, forwards SIGHUP and SIGUSR1, turns
SIGTERM/SIGINT into a graceful stop of every worker, and restarts a worker that dies (with
backoff). The workers share the assignment map through Redis, which is why N > 1 needs
``store.url``. Worker 0 also serves the admin port.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys

from router.backoff import Backoff

log = logging.getLogger("wa_router.workers")

WORKER_ENV = "WA_ROUTER_WORKER"
RESTART_BACKOFF_MAX = 30.0


def worker_index() -> int | None:
    """This process's worker index, or None in the master / a single-process router."""
    value = os.environ.get(WORKER_ENV)
    return int(value) if value is not None and value.isdigit() else None


async def _spawn(config_path: str, index: int) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "router",
        "run",
        "-c",
        config_path,
        env={**os.environ, WORKER_ENV: str(index)},
    )


async def supervise(config_path: str, workers: int, shutdown_timeout: float) -> int:
    """Run ``workers`` worker processes until SIGTERM/SIGINT; returns the exit code."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    procs: dict[int, asyncio.subprocess.Process] = {}

    def forward(sig: int) -> None:
        for p in procs.values():
            if p.returncode is None:
                p.send_signal(sig)

    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, forward, signal.SIGHUP)
    # SIGUSR1: each worker reopens its access log (logrotate signals the master's pid).
    loop.add_signal_handler(signal.SIGUSR1, forward, signal.SIGUSR1)

    for i in range(workers):
        procs[i] = await _spawn(config_path, i)
    log.info("started %d workers: %s", workers, [p.pid for p in procs.values()])

    backoff = {i: Backoff(base=0.5, cap=RESTART_BACKOFF_MAX, jitter=0.0) for i in procs}
    waits = {i: loop.create_task(p.wait()) for i, p in procs.items()}
    stopping = loop.create_task(stop.wait())
    try:
        while not stop.is_set():
            done, _ = await asyncio.wait(
                [stopping, *waits.values()], return_when=asyncio.FIRST_COMPLETED
            )
            if stop.is_set():
                break
            for i, task in list(waits.items()):
                if task in done:
                    pause = backoff[i].next()
                    log.error(
                        "worker %d (pid %d) exited with %s; restarting in %.1fs",
                        i, procs[i].pid, procs[i].returncode, pause,
                    )
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), pause)
                    if stop.is_set():
                        break
                    procs[i] = await _spawn(config_path, i)
                    waits[i] = loop.create_task(procs[i].wait())
    finally:
        forward(signal.SIGTERM)
        try:
            async with asyncio.timeout(shutdown_timeout + 5):
                await asyncio.gather(*(p.wait() for p in procs.values()))
        except TimeoutError:
            log.warning("workers did not stop in time; killing them")
            forward(signal.SIGKILL)
            await asyncio.gather(*(p.wait() for p in procs.values()))
        stopping.cancel()
        for t in waits.values():
            t.cancel()
    failed = [i for i, p in procs.items() if p.returncode not in (0, -signal.SIGTERM)]
    return 1 if failed else 0
