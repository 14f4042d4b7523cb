"""Helpers for the webhook relay tests (no tests here): a real aiohttp target server on a
loopback port that can fail first attempts, be down, answer a fixed status or hang."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from aiohttp import web

from router.config.model import RetryConfig, Secret, WebhooksConfig, WebhookTarget
from router.events import EventLog
from router.webhooks import InboundEvent, WebhookRelay
from tests.redis_server import free_port

T = TypeVar("T")


@dataclass
class Hit:
    id: str
    attempt: int
    session: str | None
    seq: int
    body: bytes
    headers: dict[str, str]
    status: int
    hmac_ok: bool | None
    at: float = field(default_factory=time.monotonic)


class Target:
    """``fail_first``: fraction of events (chosen by a hash of the id) whose FIRST attempt
    gets 500. ``status``: a fixed answer for everything. ``rule``: per-hit status override
    (return None to fall through). ``down()``/``up()``: stop/start listening."""

    def __init__(self, hmac_key: str | None = None) -> None:
        self.hmac_key = hmac_key
        self.port = free_port()
        self.hits: list[Hit] = []
        self.fail_first = 0.0
        self.status = 200
        self.rule: Callable[[Hit], int | None] | None = None
        self.delay = 0.0
        self.hold: asyncio.Event | None = None  # set: every request waits for it (a hang)
        self.is_down = False
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def start(self) -> Target:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        await self.up()
        return self

    async def up(self) -> None:
        assert self._runner is not None
        self._site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
        await self._site.start()
        self.is_down = False

    async def down(self) -> None:
        """Connection refused from now on (keep-alive connections are closed too)."""
        self.is_down = True
        assert self._runner is not None and self._site is not None
        await self._site.stop()
        server = self._runner.server
        if server is not None:
            for conn in server.connections:
                conn.force_close()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if self.hold is not None:
            await self.hold.wait()
            return web.Response(status=503)  # released: too late, the router gave up
        if self.is_down:
            request.protocol.force_close()
            return web.Response(status=503)
        doc = json.loads(body)
        sig = request.headers.get("X-Webhook-Hmac")
        ok = None
        if self.hmac_key is not None:
            want = hmac.new(self.hmac_key.encode(), body, hashlib.sha512).hexdigest()
            ok = sig is not None and hmac.compare_digest(sig, want) and \
                request.headers.get("X-Webhook-Hmac-Algorithm") == "sha512"
        hit = Hit(
            id=request.headers.get("X-Webhook-Request-Id", ""),
            attempt=int(request.headers.get("X-Webhook-Attempt", "0")),
            session=doc.get("session"), seq=int(doc.get("seq", -1)), body=body,
            headers=dict(request.headers), status=200, hmac_ok=ok,
        )  # fmt: skip
        status = self.status
        if self.fail_first and hit.attempt == 1 and zlib.crc32(hit.id.encode()) % 1000 < self.fail_first * 1000:
            status = 500
        if self.rule is not None:
            override = self.rule(hit)
            if override is not None:
                status = override
        if self.delay:
            await asyncio.sleep(self.delay)
        hit.status = status
        self.hits.append(hit)
        return web.Response(status=status, text="ok")

    def delivered(self) -> list[Hit]:
        return [h for h in self.hits if 200 <= h.status < 300]

    def delivered_ids(self) -> set[str]:
        return {h.id for h in self.delivered()}


def event(session: str | None, seq: int, name: str = "message", eid: str | None = None) -> InboundEvent:
    eid = eid or f"evt-{session}-{seq}"
    body = json.dumps({"id": eid, "event": name, "session": session, "seq": seq,
                       "payload": {"body": "héllo"}}).encode()
    return InboundEvent(id=eid, session=session, event=name, body=body, received_at=time.time())


def config(*targets: WebhookTarget, policy: str = "constant", delay: float = 0.05,
           attempts: int = 15, max_delay: float = 1.0, jitter: float = 0.0,
           ordering: str = "per_session") -> WebhooksConfig:
    return WebhooksConfig(
        targets=targets,
        retries=RetryConfig(policy=policy, delay=delay, max_delay=max_delay,  # type: ignore[arg-type]
                            attempts=attempts, jitter=jitter),
        ordering=ordering,  # type: ignore[arg-type]
    )


def target_cfg(url: str, events: tuple[str, ...] = ("*",), hmac_key: str | None = None) -> WebhookTarget:
    return WebhookTarget(url=url, events=frozenset(events), hmac_key=Secret(hmac_key) if hmac_key else None)


def relay(cfg: WebhooksConfig, redis_url: str | None, *, prefix: str = "t:", **kw: object) -> WebhookRelay:
    opts: dict[str, object] = {"claim_idle": 1.0, "breaker_base": 0.1, "breaker_max": 0.5,
                               "backlog_interval": 0.1, "request_timeout": 2.0}
    opts.update(kw)
    return WebhookRelay(cfg, redis_url=redis_url, prefix=prefix, events=EventLog(), **opts)  # type: ignore[arg-type]


async def wait_until(pred: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def eventually(get: Callable[[], Awaitable[T]], want: T, timeout: float = 5.0) -> None:
    """Poll an async observation until it equals ``want``."""
    deadline = time.monotonic() + timeout
    while (got := await get()) != want:
        if time.monotonic() > deadline:
            raise AssertionError(f"still {got!r}, wanted {want!r}")
        await asyncio.sleep(0.05)
