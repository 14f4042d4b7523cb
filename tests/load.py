"""Steady client load against a router on loopback, bounded in requests and time, counting
every answer that is not a success (the "0 failed requests" of the operating tests)."""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import aiohttp

from tests.flavors import WAHA, Flavor


@dataclass
class Load:
    """``clients`` loops over ``sessions``: GET the session, and every ``post_every``-th
    request a sendText (not idempotent: must never be lost or doubled)."""

    url: str
    sessions: Sequence[str]
    clients: int = 8
    post_every: int = 5
    max_requests: int = 200_000
    max_seconds: float = 300.0
    flavor: Flavor = WAHA  # the API spoken (tests.flavors)
    statuses: Counter[int] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    # sendText answered 502 upstream_error: written to an instance that then closed the
    # connection; it may have been sent, so it is never sent again (README, "Holding")
    posts_in_flight: int = 0
    by_instance: Counter[str] = field(default_factory=Counter)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _count: itertools.count[int] = field(default_factory=itertools.count)

    @property
    def requests(self) -> int:
        return sum(self.statuses.values()) + len(self.failures)

    def start(self) -> None:
        assert self.url.startswith("http://127.0.0.1:")
        self._tasks = [asyncio.create_task(self._client(i)) for i in range(self.clients)]

    async def wait_requests(self, n: int, timeout: float = 30.0) -> None:
        """Until ``n`` more requests were answered (the load is really running)."""
        target = self.requests + n
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.requests < target:
            assert loop.time() < deadline, f"load stalled at {self.requests} requests"
            assert not any(t.done() for t in self._tasks), "a load client died"
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    def failed(self) -> list[str]:
        bad = [f"HTTP {code} x{n}" for code, n in self.statuses.items() if not 200 <= code < 300]
        return bad + self.failures[:20]

    async def _client(self, index: int) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_seconds
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            for i in range(index, 10**9, self.clients):
                n = next(self._count)
                if self._stop.is_set() or n >= self.max_requests or loop.time() > deadline:
                    return
                session = self.sessions[i % len(self.sessions)]
                try:
                    op = "send" if self.post_every and n % self.post_every == 0 else "get"
                    async with self.flavor.request(http, self.url, session, op, timeout) as resp:
                        body = await resp.read()
                        self.statuses[resp.status] += 1
                        if not 200 <= resp.status < 300:
                            if resp.status == 502 and op == "send" and b"upstream_error" in body:
                                self.posts_in_flight += 1
                            self.failures.append(f"{resp.status} {session}: {(await resp.text())[:200]}")
                        self.by_instance[resp.headers.get("X-Router-Instance", "?")] += 1
                except (aiohttp.ClientError, TimeoutError) as e:
                    self.failures.append(f"{type(e).__name__} {session}: {e}")
