"""Alerts: notable events posted as JSON to ``alerts.webhooks`` (Slack-compatible ``text``).

``AlertPolicy`` (pure: events and a clock in, messages out) decides what is worth telling
and keeps an outage to a handful of messages:

- only these events alert: instance down / up, failover started / finished, session restore
  failed, webhook dead-lettered, webhook backlog over ``alerts.webhook_backlog_threshold``;
- the same alert (kind + instance, or kind + target) is not repeated within
  ``dedup_window``; an instance coming back up re-arms its "down" (and the reverse), so a
  second outage is reported again;
- at most ``max_per_window`` messages per ``window``; the rest are counted and summed up in
  one message when the window turns.

``Alerter`` is the async layer: it listens to the ``EventLog``, watches the webhook backlog,
and posts each message to every URL with a few retries; failures are logged without the
URL (a Slack URL is a secret).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from router import backoff
from router.clock import Clock
from router.config.holder import ConfigHolder
from router.config.model import AlertsConfig
from router.errors import UpstreamError
from router.events import Event, EventLog
from router.tasks import Tasks
from router.transport import Transport

log = logging.getLogger("wa_router.alerts")

# event kind -> (alert title, the key it is deduplicated by: "instance" or "target")
ALERTING: dict[str, str] = {
    "instance_down": "instance down",
    "instance_up": "instance up",
    "failover_started": "failover started",
    "failover_finished": "failover finished",
    "restore_failed": "session restore failed",
    "webhook_dead": "webhook dead-lettered",
    "webhook_backlog_high": "webhook backlog high",
    "outbox_session_paused": "outbox session paused",
    "outbox_campaign_stalled": "outbox campaign stalled",
    "fence_stuck": "failover blocked: the agent does not confirm its sessions stopped",
    "stale_copy": "sessions run on two instances: stale copies could not be stopped",
}
# An alert of the key on the right re-arms the one on the left (and the reverse).
OPPOSITES = {"instance_down": "instance_up", "instance_up": "instance_down"}


@dataclass(frozen=True, slots=True)
class Alert:
    text: str
    event: str
    instance: str | None
    severity: str

    def payload(self) -> dict[str, Any]:
        return {"text": self.text, "event": self.event, "instance": self.instance,
                "severity": self.severity}


@dataclass
class AlertPolicy:
    dedup_window: float = 300.0
    window: float = 60.0
    max_per_window: int = 10
    _sent: dict[tuple[str, str], float] = field(default_factory=dict)
    _window_start: float = float("-inf")
    _in_window: int = 0
    _suppressed: int = 0

    def on_event(self, ev: Event, now: float) -> list[Alert]:
        title = ALERTING.get(ev.kind)
        if title is None:
            return []
        scope = ev.instance or ev.session or str(ev.data.get("target") or "")
        key = (ev.kind, scope)
        last = self._sent.get(key)
        if last is not None and now - last < self.dedup_window:
            return []
        out = self._roll(now)
        if self._in_window >= self.max_per_window:
            self._suppressed += 1
            return out
        self._sent[key] = now
        opposite = OPPOSITES.get(ev.kind)
        if opposite is not None:
            self._sent.pop((opposite, scope), None)
        self._in_window += 1
        where = f" [{ev.instance}]" if ev.instance else ""
        out.append(Alert(f"wa-router {ev.severity.upper()}: {title}{where}: {ev.message}",
                         ev.kind, ev.instance, ev.severity))
        return out

    def tick(self, now: float) -> list[Alert]:
        """Called now and then: the summary of a finished window, if any."""
        return self._roll(now)

    def _roll(self, now: float) -> list[Alert]:
        if now - self._window_start < self.window:
            return []
        out = []
        if self._suppressed:
            out.append(Alert(f"wa-router: {self._suppressed} more alert(s) suppressed in the last "
                             f"{self.window:.0f}s (rate limit); see /admin/events",
                             "alerts_suppressed", None, "warning"))
        self._window_start = now
        self._in_window = len(out)
        self._suppressed = 0
        return out


@dataclass
class BacklogWatch:
    """Over the threshold once: one event; re-armed when back under half of it."""

    threshold: int
    high: bool = False

    def check(self, backlog: int) -> bool | None:
        """True: went high; False: back to normal; None: no change."""
        if not self.high and backlog > self.threshold:
            self.high = True
            return True
        if self.high and backlog < self.threshold / 2:
            self.high = False
            return False
        return None


def _where(url: str) -> str:
    """A URL's host only: its path and query may hold the secret."""
    return urlsplit(url).hostname or "?"


class Alerter:
    def __init__(
        self,
        config: ConfigHolder,
        events: EventLog,
        transport: Transport,
        clock: Clock,
        backlog: Callable[[], int] | None = None,
        *,
        policy: AlertPolicy | None = None,
        attempts: int = 3,
        retry_delay: float = 1.0,
        check_interval: float = 5.0,
    ) -> None:
        self._config = config
        self._clock = clock
        self._events = events
        self._backlog = backlog
        self.policy = policy or AlertPolicy()
        self._watch = BacklogWatch(config.current.alerts.webhook_backlog_threshold)
        self._attempts = attempts
        self._retry_delay = retry_delay
        self._check_interval = check_interval
        self._queue: asyncio.Queue[Alert] = asyncio.Queue(maxsize=1000)
        self.tasks = Tasks("alerts")
        self._http = transport
        self.sent = 0
        self.failed = 0

    def __repr__(self) -> str:
        return f"<Alerter sent={self.sent} failed={self.failed} queued={self._queue.qsize()}>"

    @property
    def config(self) -> AlertsConfig:
        return self._config.current.alerts

    def start(self) -> None:
        self._events.subscribe(self._on_event)
        self.tasks.spawn(self._send_loop(), name="alerts-sender")
        self.tasks.spawn(self._watch_loop(), name="alerts-watch")

    async def stop(self) -> None:
        self._events.unsubscribe(self._on_event)
        await self.tasks.stop()

    def _on_event(self, ev: Event) -> None:
        if not self.config.webhooks:
            return
        self._enqueue(self.policy.on_event(ev, self._clock.now()))

    def _enqueue(self, alerts: list[Alert]) -> None:
        for a in alerts:
            try:
                self._queue.put_nowait(a)
            except asyncio.QueueFull:
                log.warning("alerts: queue full, dropping %s", a.event)

    async def _watch_loop(self) -> None:
        while True:
            await self._clock.sleep(self._check_interval)
            # A reload may change the threshold: the watch keeps its armed state.
            self._watch.threshold = self.config.webhook_backlog_threshold
            if self.config.webhooks:
                self._enqueue(self.policy.tick(self._clock.now()))
            if self._backlog is None:
                continue
            with contextlib.suppress(Exception):
                backlog = self._backlog()
                change = self._watch.check(backlog)
                if change is True:
                    self._events.emit(
                        "webhook_backlog_high",
                        f"{backlog} webhooks wait for delivery (threshold {self._watch.threshold})",
                        severity="warning", data={"backlog": backlog},
                    )
                elif change is False:
                    self._events.emit("webhook_backlog_ok", f"webhook backlog down to {backlog}",
                                      data={"backlog": backlog})

    async def _send_loop(self) -> None:
        while True:
            alert = await self._queue.get()
            for url in self.config.webhooks:
                await self._post(url.value, alert)

    async def _post(self, url: str, alert: Alert) -> None:
        body = json.dumps(alert.payload()).encode()
        headers = {"Content-Type": "application/json", "User-Agent": "wa-router"}
        for attempt in range(1, self._attempts + 1):
            try:
                r = await self._http.request("POST", url, body, headers, timeout=10.0)
                if r.status < 400:
                    self.sent += 1
                    return
                why = f"HTTP {r.status}"
            except (UpstreamError, OSError, ValueError) as e:
                why = type(e).__name__
            if attempt < self._attempts:
                await self._clock.sleep(backoff.delay(attempt, base=self._retry_delay, cap=60.0))
        self.failed += 1
        log.warning("alerts: %s not delivered to %s after %d attempts (%s)",
                    alert.event, _where(url), self._attempts, why)
