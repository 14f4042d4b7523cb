"""Which targets get which events, and the stable key naming each target's queue (pure).

Patterns in a target's ``events``: ``*`` (everything), an exact name (``message``), or a
prefix ending in ``*``. ``message.*`` also matches ``message`` itself: operators write it
for "the message family", and WAHA's plain ``message`` event belongs to it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence


class EventFilter:
    __slots__ = ("any", "exact", "prefixes")

    def __init__(self, patterns: Iterable[str]) -> None:
        pats = set(patterns)
        self.any = "*" in pats
        stems = [p[:-1] for p in pats if p.endswith("*") and p != "*"]
        # "message.*" names the family, "message" included.
        family = {s[:-1] for s in stems if s.endswith(".")}
        self.exact = frozenset({p for p in pats if not p.endswith("*")} | family)
        self.prefixes = tuple(stems)

    def __call__(self, event: str) -> bool:
        if self.any or event in self.exact:
            return True
        return any(event.startswith(p) for p in self.prefixes)


def target_key(url: str) -> str:
    """A short stable name for a target's queue: the same URL keeps its queue across
    restarts and config reloads (16 hex digits of SHA-256)."""
    return hashlib.sha256(url.encode()).hexdigest()[:16]


def target_keys(urls: Sequence[str]) -> list[str]:
    """Keys for a config's targets, in order; a URL listed twice gets a distinct key for
    its second occurrence, so each configured target has its own queue."""
    keys: list[str] = []
    seen: dict[str, int] = {}
    for url in urls:
        n = seen.get(url, 0)
        seen[url] = n + 1
        keys.append(target_key(url if n == 0 else f"{url}#{n + 1}"))
    return keys
