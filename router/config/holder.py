"""The live config: one holder every component reads at use time, so a reload (one
assignment) reaches all of them at once and none can be left behind."""

from __future__ import annotations

from collections.abc import Callable

from router.config.model import Config

Listener = Callable[[Config, Config], None]


class ConfigHolder:
    """``current`` is the config in force. Components that derive state from it (compiled
    session rules, the placement ring) subscribe and rebuild it on ``swap``."""

    __slots__ = ("_listeners", "current")

    def __init__(self, config: Config) -> None:
        self.current = config
        self._listeners: list[Listener] = []

    def __repr__(self) -> str:
        return f"<ConfigHolder {self.current.source or 'in memory'}: {len(self.current.instances)} instances>"

    def subscribe(self, listener: Listener) -> None:
        """``listener(old, new)`` runs synchronously inside ``swap``."""
        self._listeners.append(listener)

    def swap(self, config: Config) -> Config:
        """Put ``config`` in force; derived state is rebuilt before this returns (no await
        in between, so no request sees half of it). Returns the old config."""
        old, self.current = self.current, config
        for listener in self._listeners:
            listener(old, config)
        return old
