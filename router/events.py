"""Recent operational events (ejections, failovers, moves, reloads), newest first.

A bounded in-memory ring: the admin API shows it, alerting subscribes to it. Listeners are
called synchronously and must not block.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("wa_router.events")


@dataclass(frozen=True, slots=True)
class Event:
    kind: str  # e.g. instance_down, instance_up, ejected, failover_started, session_moved
    message: str
    ts: float = field(default_factory=time.time)
    instance: str | None = None
    session: str | None = None
    severity: str = "info"  # info | warning | critical
    data: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"ts": self.ts, "kind": self.kind, "severity": self.severity,
                               "message": self.message}
        if self.instance is not None:
            out["instance"] = self.instance
        if self.session is not None:
            out["session"] = self.session
        if self.data:
            out["data"] = self.data
        return out


class EventLog:
    def __init__(self, size: int = 1000) -> None:
        self._events: deque[Event] = deque(maxlen=size)
        self._listeners: list[Callable[[Event], None]] = []

    def emit(self, kind: str, message: str, **kw: Any) -> Event:
        ev = Event(kind, message, **kw)
        self._events.append(ev)
        level = {"critical": logging.ERROR, "warning": logging.WARNING}.get(ev.severity, logging.INFO)
        log.log(level, "%s: %s", kind, message,
                extra={"event": kind, "session": ev.session, "instance": ev.instance})
        for listener in self._listeners:
            try:
                listener(ev)
            except Exception:
                log.exception("event listener failed")
        return ev

    def subscribe(self, listener: Callable[[Event], None]) -> None:
        self._listeners.append(listener)

    def unsubscribe(self, listener: Callable[[Event], None]) -> None:
        with contextlib.suppress(ValueError):
            self._listeners.remove(listener)

    def recent(self, limit: int = 100, kind: str | None = None) -> list[Event]:
        out: list[Event] = []
        for ev in reversed(self._events):
            if kind is None or ev.kind == kind:
                out.append(ev)
                if len(out) >= limit:
                    break
        return out
