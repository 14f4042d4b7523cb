"""Background webhook sender: one queue, one worker, one ClientSession, order preserved."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging

import aiohttp

from router.sim.events import Event

log = logging.getLogger(__name__)


def sign(key: str, raw: bytes) -> str:
    """Hex HMAC-SHA512 of the raw body, as WAHA's ``X-Webhook-Hmac``."""
    return hmac.new(key.encode(), raw, hashlib.sha512).hexdigest()


class WebhookSender:
    """Posts events to ``url`` in order; retries transient failures; never blocks emitters.

    The queue is bounded: when full, the oldest pending event is dropped and counted.
    """

    def __init__(
        self,
        url: str,
        *,
        hmac_key: str | None = None,
        maxsize: int = 10_000,
        retries: int = 3,
        backoff: float = 0.1,
        timeout: float = 5.0,
    ) -> None:
        self.url = url
        self.hmac_key = hmac_key
        self.maxsize = maxsize
        self.retries = retries
        self.backoff = backoff
        self.timeout = timeout
        self.sent = 0
        self.failed = 0
        self.retried = 0
        self.dropped = 0
        self._queue: asyncio.Queue[Event] = asyncio.Queue(maxsize)
        self._session: aiohttp.ClientSession | None = None
        self._worker: asyncio.Task[None] | None = None

    @property
    def backlog(self) -> int:
        """Events waiting to be sent (not counting the one in flight)."""
        return self._queue.qsize()

    def submit(self, event: Event) -> None:
        """Queue an event (sink for ``Hub``); drops the oldest when the queue is full."""
        if self._queue.full():
            self._queue.get_nowait()
            self._queue.task_done()
            self.dropped += 1
        self._queue.put_nowait(event)

    def reset_counters(self) -> None:
        """Zero the sent/failed/retried/dropped counters."""
        self.sent = self.failed = self.retried = self.dropped = 0

    async def start(self) -> None:
        """Open the HTTP session and start the worker."""
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.timeout),
            headers={"User-Agent": "wa-router-sim"},
        )
        self._worker = asyncio.create_task(self._run(), name="sim-webhook-sender")

    async def drain(self, max_wait: float) -> bool:
        """Wait until nothing is pending, at most ``max_wait`` seconds."""
        try:
            async with asyncio.timeout(max_wait):
                await self._queue.join()
        except TimeoutError:
            return False
        return True

    async def close(self, drain_timeout: float = 1.0) -> None:
        """Flush briefly, then stop the worker and close the session."""
        if self._worker is not None:
            await self.drain(drain_timeout)
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _run(self) -> None:
        while True:
            event = await self._queue.get()
            try:
                ok = await self._deliver(event)
            except Exception:  # a bug must not kill the worker
                log.exception("webhook %s: unexpected error", event.id)
                ok = False
            try:
                if ok:
                    self.sent += 1
                else:
                    self.failed += 1
            finally:
                self._queue.task_done()

    async def _deliver(self, event: Event) -> bool:
        assert self._session is not None
        raw = event.raw.encode()
        headers = {
            "Content-Type": "application/json",
            "X-Webhook-Request-Id": event.id,
            "X-Webhook-Timestamp": str(event.timestamp),
        }
        if self.hmac_key is not None:
            headers["X-Webhook-Hmac"] = sign(self.hmac_key, raw)
            headers["X-Webhook-Hmac-Algorithm"] = "sha512"
        for attempt in range(self.retries + 1):
            if attempt:
                self.retried += 1
                await asyncio.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                async with self._session.post(self.url, data=raw, headers=headers) as resp:
                    await resp.read()
                    if resp.status < 300:
                        return True
                    if resp.status < 500 and resp.status != 429:
                        log.warning("webhook %s rejected: HTTP %s", event.id, resp.status)
                        return False
                    log.info("webhook %s: HTTP %s (attempt %d)", event.id, resp.status, attempt)
            except (aiohttp.ClientError, TimeoutError) as exc:
                log.info("webhook %s: %r (attempt %d)", event.id, exc, attempt)
        log.warning("webhook %s failed after %d attempts", event.id, self.retries + 1)
        return False
