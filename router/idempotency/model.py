"""The rules of ``Idempotency-Key`` (IETF httpapi draft "The Idempotency-Key HTTP Header
Field"), without I/O.

A key names one request of one client: its scope is the client key, the session, the
method and the path, and its fingerprint is the body's SHA-256. The first request claims
the key (``IN_FLIGHT``) and is forwarded; its final response is kept (``DONE``) and replayed
to every retry; a retry while the first is in flight gets 409, one with another body 422.
When nobody can know whether the instance acted on it (it died with the request in flight,
or the router that claimed the key died), the key keeps ``UNKNOWN``: 502 ``outcome_unknown``,
replayed, and the request is never sent again (a customer would get the message twice).
"""

from __future__ import annotations

import enum
import hashlib
from typing import NamedTuple

MAX_KEY = 255
KEPT_BODY = 1024 * 1024  # a response body kept for replay at most this large


class State(enum.Enum):
    IN_FLIGHT = b"F"
    DONE = b"D"
    UNKNOWN = b"U"


class Record(NamedTuple):
    """What a key holds. A named tuple, not a frozen dataclass: one is made for every keyed
    request, and a frozen dataclass's ``__init__`` costs several times a tuple's."""

    state: State
    fingerprint: str
    at: float  # when the key was claimed (wall clock)
    status: int = 0
    content_type: str = ""
    body: bytes = b""

    def encode(self) -> bytes:
        return b"%s\n%s\n%r\n%d\n%s\n%s" % (
            self.state.value, self.fingerprint.encode(), self.at, self.status,
            self.content_type.encode("latin-1"), self.body)

    @classmethod
    def decode(cls, raw: bytes) -> Record:
        state, fingerprint, at, status, content_type, body = raw.split(b"\n", 5)
        return cls(State(state), fingerprint.decode(), float(at), int(status),
                   content_type.decode("latin-1"), body)


def valid_key(key: str) -> bool:
    return 0 < len(key) <= MAX_KEY and key.isprintable()


def digest(client: str, session: str | None, method: str, path: str, key: str) -> str:
    """The stored name of a key in its scope (the client key itself is never stored)."""
    scope = f"{client}\n{session or ''}\n{method}\n{path}\n{key}"
    return hashlib.sha256(scope.encode("utf-8", "surrogateescape")).hexdigest()


def fingerprint(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


class Verdict(enum.Enum):
    PROCEED = "proceed"  # the key is ours: forward the request
    REPLAY = "replay"  # answer the kept response (``Idempotent-Replayed: true``)
    IN_FLIGHT = "in_flight"  # 409: the first request is still being answered
    REUSED = "reused"  # 422: the key came with another body
    UNKNOWN = "unknown"  # 502 outcome_unknown (kept): never sent again


def decide(found: Record | None, fingerprint: str, now: float, in_flight_for: float) -> Verdict:
    """What a request with a key gets, given what the key held when it tried to claim it
    (``None``: nothing, so it claimed it). ``in_flight_for``: how long a request can take
    end to end; a claim older than that was left by a router that died."""
    if found is None:
        return Verdict.PROCEED
    if found.fingerprint != fingerprint:
        return Verdict.REUSED
    if found.state is State.DONE:
        return Verdict.REPLAY
    if found.state is State.UNKNOWN or now - found.at > in_flight_for:
        return Verdict.UNKNOWN
    return Verdict.IN_FLIGHT


def kept(status: int, content_type: str, body: bytes, size: int, fingerprint: str,
         at: float) -> Record:
    """The record of a final response (``size``: its body's; ``body``: what was kept of it):
    bodies over KEPT_BODY keep their status only (a replay then says so in its body)."""
    if size > KEPT_BODY:
        return Record(State.DONE, fingerprint, at, status, "application/json",
                      b'{"error":"response_not_kept","message":"the first response was larger '
                      b'than 1 MiB; it was answered with this status"}')
    return Record(State.DONE, fingerprint, at, status, content_type, body)
