"""WAHA events: ids, bodies, and the fan-out to webhooks and WebSocket subscribers."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from router.ids import ulid
from router.sim.model import ENGINE, now_ms

__all__ = ["Event", "Hub", "Subscriber", "ulid"]

@dataclass(frozen=True, slots=True)
class Event:
    """One event; ``raw`` is the exact JSON text sent (and signed)."""

    id: str
    timestamp: int
    event: str
    session: str
    raw: str

    @classmethod
    def build(
        cls, event: str, session: str, me: dict[str, str] | None, payload: dict[str, Any]
    ) -> Event:
        """The WAHA webhook body ``{"id","timestamp","event","session","me","payload","engine"}``."""
        ts = now_ms()
        event_id = f"evt_{ulid(ts)}"
        body = {
            "id": event_id,
            "timestamp": ts,
            "event": event,
            "session": session,
            "me": me,
            "payload": payload,
            "engine": ENGINE,
        }
        raw = json.dumps(body, separators=(",", ":"))
        return cls(event_id, ts, event, session, raw)


class Subscriber:
    """A WebSocket listener: events of one session (or ``*``), buffered in a bounded queue."""

    def __init__(self, session: str, events: frozenset[str] | None, maxsize: int = 1000) -> None:
        self.session = session
        self.events = events
        self.queue: asyncio.Queue[str] = asyncio.Queue(maxsize)
        self.dropped = 0

    def wants(self, event: Event) -> bool:
        """Whether this subscriber asked for ``event``."""
        if self.session not in ("*", event.session):
            return False
        return self.events is None or event.event in self.events

    def offer(self, text: str) -> None:
        """Queue ``text``, dropping the oldest when full (a slow reader never blocks emitters)."""
        if self.queue.full():
            self.queue.get_nowait()
            self.dropped += 1
        self.queue.put_nowait(text)


class Hub:
    """Routes each event to every interested sink (webhook sender, WebSocket subscribers)."""

    def __init__(self) -> None:
        self.subscribers: set[Subscriber] = set()
        self.sinks: list[Callable[[Event], None]] = []
        self.emitted = 0

    def emit(
        self, event: str, session: str, me: dict[str, str] | None, payload: dict[str, Any]
    ) -> Event:
        """Build an event and hand it to every sink and subscriber without blocking."""
        evt = Event.build(event, session, me, payload)
        self.emitted += 1
        for sink in self.sinks:
            sink(evt)
        for sub in self.subscribers:
            if sub.wants(evt):
                sub.offer(evt.raw)
        return evt
