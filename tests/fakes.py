"""Fakes for the component layer: a manual clock and in-process instances behind the
control-plane transport. With them ``create_app`` runs failover, drains, rebalances and
reloads in milliseconds, with no process and no sleep."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import json
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from router.errors import UpstreamConnectError, UpstreamError
from router.transport import Response


def pure_only(why: str) -> None:
    """Skip under the compiled build (``router.build``): compiled classes check their
    arguments' types, so a fake cannot stand in for them. ``scripts/test`` runs the unit and
    component layers as pure Python too, where these tests run."""
    from router import build

    if build.mode() == "compiled":
        pytest.skip(f"pure Python only ({why}); run by scripts/test's pure layer")


WALL_OFFSET = 1_800_000_000.0  # the manual clock's wall time is its monotonic time plus this


class ManualClock:
    """Time moves only when the test says so: ``advance`` wakes every sleeper whose time
    has come, in order, letting the loop run in between."""

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def __repr__(self) -> str:
        return f"<ManualClock t={self._now:.3f} sleepers={len(self._sleepers)}>"

    def now(self) -> float:
        return self._now

    def wall(self) -> float:
        return WALL_OFFSET + self._now

    async def sleep(self, seconds: float) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._now + max(0.0, seconds), next(self._seq), fut))
        await fut

    async def wait(self, aw: Awaitable[object], timeout: float) -> bool:
        task = asyncio.ensure_future(aw)
        timer = asyncio.ensure_future(self.sleep(timeout))
        try:
            done, _ = await asyncio.wait({task, timer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            timer.cancel()
        if task in done:
            task.result()
            return True
        task.cancel()
        return False

    @staticmethod
    async def settle(rounds: int = 30) -> None:
        """Let every ready task run (fakes answer without I/O, so a few rounds are enough)."""
        for _ in range(rounds):
            await asyncio.sleep(0)

    async def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``, waking sleepers at their own deadlines."""
        target = self._now + seconds
        await self.settle()
        while self._sleepers and self._sleepers[0][0] <= target:
            deadline, _, fut = heapq.heappop(self._sleepers)
            if fut.done():
                continue
            self._now = max(self._now, deadline)
            fut.set_result(None)
            await self.settle()
        self._now = target
        await self.settle()

    async def run_until(self, done: Callable[[], bool], limit: float, step: float = 0.1) -> float:
        """Advance in ``step``s until ``done()``; returns the time it took. Fails past
        ``limit`` seconds of clock time."""
        start = self._now
        while not done():
            if self._now - start > limit:
                raise AssertionError(f"not done after {limit}s of clock time")
            await self.advance(step)
        return self._now - start


@dataclass
class FakeInstance:
    """A WAHA instance in memory: sessions with a status, ``start_delay`` seconds from
    start to WORKING (on the manual clock), every call recorded."""

    name: str
    clock: ManualClock
    start_delay: float = 0.5
    up: bool = True
    sessions: dict[str, str] = field(default_factory=dict)  # name -> status
    ready_at: dict[str, float] = field(default_factory=dict)
    calls: list[tuple[str, str]] = field(default_factory=list)  # (method, path)
    fail_starts: int = 0  # the next N starts answer 500
    sent: list[tuple[str, str, float]] = field(default_factory=list)  # (session, text, clock)
    fail_sends: int = 0  # the next N sends answer ``fail_status`` (nothing sent)
    fail_status: int = 500
    drop_sends: int = 0  # the next N sends are sent, then the answer is lost
    hooks: list[dict[str, Any]] = field(default_factory=list)  # webhooks POSTed to /hook

    def status(self, session: str) -> str | None:
        st = self.sessions.get(session)
        if st == "STARTING" and self.clock.now() >= self.ready_at[session]:
            st = self.sessions[session] = "WORKING"
        return st

    def working(self) -> set[str]:
        return {s for s in list(self.sessions) if self.status(s) == "WORKING"}

    def count(self, method: str, path_prefix: str) -> int:
        return sum(1 for m, p in self.calls if m == method and p.startswith(path_prefix))

    def send_text(self, body: bytes) -> Response:
        data = json.loads(body)
        session, text = data.get("session", "default"), data.get("text", "")
        if self.fail_sends > 0:
            self.fail_sends -= 1
            return _json(self.fail_status, {"error": "simulated"})
        status = self.status(session)
        if status is None:
            return _json(404, {"message": f"We didn't find a session with name '{session}'"})
        if status != "WORKING":
            return _json(422, {"status": status, "expected": ["WORKING"]})
        self.sent.append((session, text, self.clock.now()))
        if self.drop_sends > 0:
            self.drop_sends -= 1
            raise UpstreamError("the instance closed the connection before answering")
        return _json(201, {"id": f"true_{len(self.sent)}", "body": text})

    def crash(self) -> None:
        """The process dies: unreachable, and its sessions are gone with it."""
        self.up = False
        self.sessions.clear()

    def restart(self) -> None:
        self.up = True

    def run(self, session: str) -> None:
        """A session already WORKING here (as after a QR scan)."""
        self.sessions[session] = "WORKING"

    def handle(self, method: str, target: str, body: bytes) -> Response:
        self.calls.append((method, target))
        parts = urlsplit(target)
        path = [unquote(p) for p in parts.path.strip("/").split("/")]
        if parts.path == "/ping":
            return _json(200, {"message": "pong"})
        if method == "POST" and parts.path == "/api/sendText":
            return self.send_text(body)
        if method == "POST" and parts.path == "/hook":
            self.hooks.append(json.loads(body))
            return _json(200, {"ok": True})
        if path[:2] != ["api", "sessions"]:
            return _json(200, {"instance": self.name, "method": method, "path": parts.path})
        if len(path) == 2 and method == "GET":
            everyone = parse_qs(parts.query).get("all") == ["true"]
            return _json(200, [{"name": s, "status": self.status(s)} for s in list(self.sessions)
                               if everyone or self.status(s) != "STOPPED"])
        session = path[2] if len(path) > 2 else ""
        if len(path) == 3 and method == "GET":
            st = self.status(session)
            return _json(404, {"error": "not found"}) if st is None else _json(200, {"name": session, "status": st})
        action = path[3] if len(path) == 4 else ""
        if method == "POST" and action in ("start", "restart"):
            if self.fail_starts > 0:
                self.fail_starts -= 1
                return _json(500, {"error": "start failed"})
            if self.status(session) != "WORKING":
                self.sessions[session] = "STARTING"
                self.ready_at[session] = self.clock.now() + self.start_delay
            return _json(201, {"name": session, "status": self.sessions[session]})
        if method == "POST" and action == "stop":
            if session in self.sessions:
                self.sessions[session] = "STOPPED"
            return _json(201, {"name": session, "status": "STOPPED"})
        return _json(404, {"error": f"no route {method} {parts.path}"})


class FakeInstances:
    """The control-plane ``Transport`` over fake instances, addressed by origin."""

    def __init__(self, clock: ManualClock, names: Iterable[str], base_port: int = 3001,
                 start_delay: float = 0.5) -> None:
        self.by_origin: dict[str, FakeInstance] = {}
        self.by_name: dict[str, FakeInstance] = {}
        self.clock = clock
        self._start_delay = start_delay
        self._port = base_port
        for name in names:
            self.add(name)

    def add(self, name: str) -> FakeInstance:
        inst = FakeInstance(name, self.clock, start_delay=self._start_delay)
        self.by_origin[f"http://127.0.0.1:{self._port}"] = inst
        self.by_name[name] = inst
        self._port += 1
        return inst

    def url(self, name: str) -> str:
        return next(o for o, i in self.by_origin.items() if i.name == name)

    def __getitem__(self, name: str) -> FakeInstance:
        return self.by_name[name]

    def where(self, session: str) -> list[str]:
        """The instances on which ``session`` is WORKING."""
        return [i.name for i in self.by_name.values() if session in i.working()]

    async def request(self, method: str, url: str, body: bytes = b"",
                      headers: Mapping[str, str] | None = None, *, timeout: float,
                      max_body: int = 0, once: bool = False) -> Response:
        parts = urlsplit(url)
        inst = self.by_origin.get(f"{parts.scheme}://{parts.netloc}")
        if inst is None or not inst.up:
            raise UpstreamConnectError("connection refused")
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        return inst.handle(method, target, body)

    def forget(self, origin: str) -> None:
        pass

    def close(self) -> None:
        pass


def _json(status: int, body: object) -> Response:
    return Response(status, json.dumps(body).encode())
