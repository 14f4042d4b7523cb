"""What the simulated instance really sent, and the faults a test asks it to make.

``Sent`` is the ground truth the outbox tests count losses and duplicates against
(``GET /sim/sent``). ``SendFaults`` holds the faults set through ``POST /sim/faults``:
``{"sendText": {"status": 500, "count": 3}}`` answers the next 3 sends with 500 (nothing
sent), ``{"sendText": {"drop_after_send": 2}}`` sends the next 2 and then closes the
connection without an answer, ``{"sendText": {"delay": "2s"}}`` waits before every send
until cleared, ``{"clear": true}`` clears them all.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from router.config.units import parse_duration

MAX_SENT = 1_000_000  # the log is the tests' ground truth; bounded all the same
ACK_NAMES = {2: "DEVICE", 3: "READ"}


@dataclass(frozen=True, slots=True)
class SentMessage:
    id: str
    session: str
    chat_id: str
    text: str
    ts: int  # Unix milliseconds

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "session": self.session, "chatId": self.chat_id,
                "text": self.text, "ts": self.ts}


@dataclass(slots=True)
class SendFaults:
    status: int = 0  # answer this status instead of sending...
    status_count: int = 0  # ...this many more times
    drop_after_send: int = 0  # send, then close the connection without an answer
    delay: float = 0.0  # before every send

    def set(self, spec: object) -> None:
        """Apply a ``/sim/faults`` body's ``sendText`` part; ``ValueError`` (and nothing
        changed) when any of it is wrong."""
        if not isinstance(spec, dict):
            raise ValueError("'sendText' must be an object")
        unknown = set(spec) - {"status", "count", "drop_after_send", "delay"}
        if unknown:
            raise ValueError(f"unknown fault(s): {sorted(unknown)}")
        status, count = spec.get("status"), spec.get("count", 1)
        drop, delay = spec.get("drop_after_send"), spec.get("delay")
        if status is not None and (not isinstance(status, int) or not 100 <= status <= 599):
            raise ValueError("'status' must be an HTTP status")
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise ValueError("'count' must be a whole number")
        if drop is not None and (not isinstance(drop, int) or isinstance(drop, bool) or drop < 0):
            raise ValueError("'drop_after_send' must be a whole number")
        try:
            seconds = None if delay is None else parse_duration(delay)
        except ValueError as e:
            raise ValueError(f"'delay': {e}") from None
        if status is not None:
            self.status, self.status_count = status, count
        if drop is not None:
            self.drop_after_send = drop
        if seconds is not None:
            self.delay = seconds

    def take_status(self) -> int | None:
        """The status to answer this send with instead of sending, if any."""
        if self.status_count <= 0:
            return None
        self.status_count -= 1
        return self.status

    def take_drop(self) -> bool:
        if self.drop_after_send <= 0:
            return False
        self.drop_after_send -= 1
        return True

    def to_json(self) -> dict[str, Any]:
        return {"status": self.status, "count": self.status_count,
                "drop_after_send": self.drop_after_send, "delay": self.delay}


class Outbound:
    """The sent log, the faults, and the ack events that follow every send."""

    def __init__(self, ack_delay: float = 0.2) -> None:
        self.sent: list[SentMessage] = []
        self.faults = SendFaults()
        self.ack_delay = ack_delay
        self._acks: set[asyncio.Task[None]] = set()

    def record(self, message: SentMessage) -> None:
        if len(self.sent) < MAX_SENT:
            self.sent.append(message)

    def listing(self, session: str | None) -> list[dict[str, Any]]:
        return [m.to_json() for m in self.sent if session is None or m.session == session]

    def acknowledge(self, emit: Callable[[int], None]) -> None:
        """``emit(2)`` after ``ack_delay``, then ``emit(3)`` after another one."""
        async def acks() -> None:
            for ack in (2, 3):
                await asyncio.sleep(self.ack_delay)
                emit(ack)

        task = asyncio.get_running_loop().create_task(acks(), name="sim-acks")
        self._acks.add(task)
        task.add_done_callback(self._acks.discard)

    async def close(self) -> None:
        for task in list(self._acks):
            task.cancel()
        for task in list(self._acks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
