"""The outbox's paths on the proxy port, told apart without I/O (tables in the tests).

``/outbox/campaigns...``, ``/outbox/messages/...`` and ``/outbox/sessions/...`` are the
outbox's own API; any other ``POST``/``PUT``/``PATCH`` under ``/outbox`` is a send to queue
(``/outbox/api/sendText`` queues ``/api/sendText``).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote

from router.errors import MethodNotAllowed, NotFound

PREFIX = "/outbox"
SENDS = frozenset({"POST", "PUT", "PATCH"})


@dataclass(frozen=True, slots=True)
class Route:
    action: str  # enqueue | create_campaign | add_to_campaign | campaign | campaign_action |
    #              message | cancel | retry | session
    target: str = ""  # the id, session, or (enqueue) the path to send
    verb: str = ""  # campaign_action: pause | resume | cancel


def is_outbox(path: str) -> bool:
    return path == PREFIX or path.startswith(PREFIX + "/")


def route(method: str, path: str) -> Route:
    """What a request under ``/outbox`` asks for; ``NotFound`` / ``MethodNotAllowed``."""
    rest = path[len(PREFIX):]
    parts = [unquote(p) for p in rest.split("/")[1:]]
    head = parts[0] if parts else ""
    if head == "campaigns":
        return _campaigns(method, parts[1:])
    if head == "messages" and len(parts) in (2, 3) and parts[1]:
        if len(parts) == 2:
            return _only(method, {"GET": Route("message", parts[1]),
                                  "DELETE": Route("cancel", parts[1])})
        if parts[2] == "retry":
            return _only(method, {"POST": Route("retry", parts[1])})
        raise NotFound(f"no outbox endpoint {path}")
    if head == "sessions" and len(parts) == 2 and parts[1]:
        return _only(method, {"GET": Route("session", parts[1])})
    if method not in SENDS:
        raise MethodNotAllowed(f"{method} cannot be queued: only POST, PUT and PATCH sends are")
    if not rest.startswith("/") or rest == "/":
        raise NotFound("name the send after /outbox, e.g. /outbox/api/sendText")
    return Route("enqueue", rest)


def _campaigns(method: str, parts: list[str]) -> Route:
    if not parts:
        return _only(method, {"POST": Route("create_campaign")})
    cid = parts[0]
    if len(parts) == 1:
        return _only(method, {"GET": Route("campaign", cid)})
    if len(parts) == 2 and parts[1] == "messages":
        return _only(method, {"POST": Route("add_to_campaign", cid)})
    if len(parts) == 2 and parts[1] in ("pause", "resume", "cancel"):
        return _only(method, {"POST": Route("campaign_action", cid, parts[1])})
    raise NotFound("no such campaign endpoint")


def _only(method: str, allowed: dict[str, Route]) -> Route:
    found = allowed.get(method)
    if found is None:
        raise MethodNotAllowed(f"use {' or '.join(sorted(allowed))}")
    return found
