"""Counters exposed at ``GET /sim/stats`` for tests."""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

MAX_ROUTE_KEYS = 10_000


class Stats:
    """Requests per route and session calls per session; cleared by ``POST /sim/reset``."""

    def __init__(self) -> None:
        self.routes: Counter[str] = Counter()
        self.calls: defaultdict[str, Counter[str]] = defaultdict(Counter)

    def request(self, key: str) -> None:
        """Count one request under ``key`` (``"METHOD /route"``), bounded in distinct keys."""
        if key not in self.routes and len(self.routes) >= MAX_ROUTE_KEYS:
            key = key.split(" ", 1)[0] + " (other)"
        self.routes[key] += 1

    def call(self, session: str, action: str) -> None:
        """Count one session action (start, stop, restart, logout, create, delete, sendText)."""
        self.calls[session][action] += 1

    def reset(self) -> None:
        """Clear every counter."""
        self.routes.clear()
        self.calls.clear()

    def to_json(self) -> dict[str, Any]:
        """Counters as plain JSON."""
        return {
            "requests": dict(self.routes),
            "calls": {s: dict(c) for s, c in self.calls.items()},
        }
