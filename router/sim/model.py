"""Pure session model of the simulated WAHA instance: no I/O, no asyncio."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

HISTORY_LEN = 5
ENGINE = "WEBJS"


class Status(StrEnum):
    """WAHA session statuses."""

    STOPPED = "STOPPED"
    STARTING = "STARTING"
    SCAN_QR_CODE = "SCAN_QR_CODE"
    WORKING = "WORKING"
    FAILED = "FAILED"


RUNNING = frozenset({Status.STARTING, Status.WORKING})


def now_ms() -> int:
    """Wall clock in milliseconds, as WAHA timestamps are."""
    return int(time.time() * 1000)


def phone_for(name: str) -> str:
    """A stable fake phone number for a session: the same on every instance (shared auth)."""
    digest = hashlib.sha256(name.encode()).digest()
    return "1" + str(int.from_bytes(digest[:8], "big") % 10**11).zfill(11)


def me_for(name: str) -> dict[str, str]:
    """WAHA ``me`` object of a logged-in session."""
    return {"id": f"{phone_for(name)}@c.us", "pushName": name}


@dataclass
class Session:
    """One session as this instance knows it."""

    name: str
    status: Status = Status.STOPPED
    history: list[tuple[Status, int]] = field(default_factory=list)

    def me(self) -> dict[str, str] | None:
        """``me`` while WORKING, else null (WAHA knows the account only once logged in)."""
        return me_for(self.name) if self.status is Status.WORKING else None

    def statuses(self) -> list[dict[str, Any]]:
        """Recent transitions, oldest first, as in WAHA's ``session.status`` payload."""
        return [{"status": str(s), "timestamp": ts} for s, ts in self.history]

    def to_json(self) -> dict[str, Any]:
        """The WAHA session JSON (``GET /api/sessions/{s}``)."""
        return {
            "name": self.name,
            "status": str(self.status),
            "config": {},
            "me": self.me(),
            "engine": {"engine": ENGINE},
        }


class Registry:
    """Sessions by name. Mutations return whether anything changed."""

    def __init__(self) -> None:
        self._sessions: dict[str, Session] = {}

    def __contains__(self, name: object) -> bool:
        return name in self._sessions

    def __len__(self) -> int:
        return len(self._sessions)

    def __iter__(self) -> Iterator[Session]:
        return iter(list(self._sessions.values()))

    def get(self, name: str) -> Session | None:
        """The session, or None when this instance does not know it."""
        return self._sessions.get(name)

    def add(self, name: str, status: Status = Status.STOPPED) -> Session:
        """Create a session (must not exist yet)."""
        if name in self._sessions:
            raise KeyError(name)
        session = Session(name, status, [(status, now_ms())])
        self._sessions[name] = session
        return session

    def set_status(self, name: str, status: Status) -> bool:
        """Move a known session to ``status``; False when it was already there."""
        session = self._sessions[name]
        if session.status is status:
            return False
        session.status = status
        session.history.append((status, now_ms()))
        del session.history[:-HISTORY_LEN]
        return True

    def remove(self, name: str) -> Session | None:
        """Forget a session."""
        return self._sessions.pop(name, None)

    def clear(self) -> None:
        """Forget every session."""
        self._sessions.clear()

    def listing(self, *, all_: bool) -> list[dict[str, Any]]:
        """``GET /api/sessions`` body: all sessions, or only those not STOPPED."""
        return [
            s.to_json() for s in self._sessions.values() if all_ or s.status is not Status.STOPPED
        ]

    def by_status(self) -> dict[str, int]:
        """Count of sessions in each status (every status listed)."""
        counts = {str(s): 0 for s in Status}
        for session in self._sessions.values():
            counts[str(session.status)] += 1
        return counts

    def snapshot(self) -> dict[str, str]:
        """name -> status, for the state file."""
        return {s.name: str(s.status) for s in self._sessions.values()}

    def restore(self, items: Iterable[tuple[str, Status]]) -> None:
        """Replace every session with ``items``."""
        self._sessions.clear()
        for name, status in items:
            self.add(name, status)
