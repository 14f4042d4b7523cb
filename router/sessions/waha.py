"""Built-in rules for WAHA (devlikeapro/waha), checked against its NestJS controllers.

Where WAHA names the session:

- path: ``/api/sessions/{s}[/...]``, ``/api/{s}/<resource>/...`` (chats, groups, contacts,
  auth, profile, presence, labels, channels, status, media, events, calls, lids, ...),
  ``/api/files/{s}/...``, ``/api/apps/{app}/{s}/...``,
  ``/api/server/debug/browser/trace/{s}``, ``/webhooks/chatwoot/{s}/{id}``;
- body ``session`` (JSON or urlencoded): ``/api/sendText`` and the other send/action
  endpoints, ``POST /api/contacts/block|unblock``, ``POST /api/apps``; the media senders
  (sendImage/File/Voice/Video) also take ``?session=`` (multipart uploads);
- query ``session``: ``/api/screenshot``, ``/api/messages``, ``/api/checkNumberStatus``,
  ``GET /api/contacts[/...]``, ``GET /api/sendText``, ``GET /api/apps``, ``/ws``;
- body ``name``: ``POST /api/sessions`` and the deprecated ``POST
  /api/sessions/start|stop|logout``.

WAHA's DTOs default a missing body/query ``session`` to ``"default"``, so those endpoints
answer "default" when the body is readable and has none. Express matches routes
case-insensitively, so the fixed words are compared in lower case (the ids are not).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from router.sessions.common import (
    ABSENT,
    NEEDS_BODY,
    UNUSABLE,
    BodyView,
    Extracted,
    IdCheck,
    path_segment,
    query_get,
)

DEFAULT_SESSION: Final = "default"

# What the word after /api/ means. Any other word followed by more segments is a session.
_BODY: Final = 1  # POST/PUT body `session`, GET query `session`; missing: "default"
_BODY_OR_QUERY: Final = 2  # the same, and the query as a fallback for multipart bodies
_SEND: Final = 3  # /api/send/<...>: like _BODY, two or three segments deep
_QUERY: Final = 4  # query `session`; missing: "default"
_CONTACTS: Final = 5
_APPS: Final = 6
_SESSIONS: Final = 7
_FILES: Final = 8
_SERVER: Final = 9
_RESERVED: Final = 10  # a top-level resource that never names a session

_WORDS: Final[dict[str, int]] = {
    "sendText": _BODY,
    "sendButtons": _BODY,
    "sendList": _BODY,
    "sendPoll": _BODY,
    "sendPollVote": _BODY,
    "sendLocation": _BODY,
    "sendContactVcard": _BODY,
    "sendLinkPreview": _BODY,
    "sendSeen": _BODY,
    "sendTextButtons": _BODY,
    "forwardMessage": _BODY,
    "startTyping": _BODY,
    "stopTyping": _BODY,
    "reaction": _BODY,
    "star": _BODY,
    "reply": _BODY,
    "sendImage": _BODY_OR_QUERY,
    "sendFile": _BODY_OR_QUERY,
    "sendVoice": _BODY_OR_QUERY,
    "sendVideo": _BODY_OR_QUERY,
    "send": _SEND,
    "screenshot": _QUERY,
    "messages": _QUERY,
    "checkNumberStatus": _QUERY,
    "contacts": _CONTACTS,
    "apps": _APPS,
    "sessions": _SESSIONS,
    "files": _FILES,
    "server": _SERVER,
    "version": _RESERVED,
    "keys": _RESERVED,
    "admin": _RESERVED,
    "tenants": _RESERVED,
    "scheduler": _RESERVED,
    "s3": _RESERVED,
}
# Exact spelling first (no allocation), then the lower-cased word.
_LOOKUP: Final = {**_WORDS, **{k.lower(): v for k, v in _WORDS.items()}}
_DEPRECATED_SESSION_ACTIONS: Final = frozenset({"start", "stop", "logout"})

_PATH: Final = "path"
_QUERY_SRC: Final = "query parameter 'session'"


class WahaProfile:
    """Session id of a WAHA request (see the module docstring for the forms)."""

    __slots__ = ("_check", "_default", "_limit")

    def __init__(self, check: IdCheck, body_limit: int) -> None:
        self._check = check
        self._limit = body_limit
        # An id_pattern that refuses "default" means such requests are unscoped.
        self._default = DEFAULT_SESSION if check.ok(DEFAULT_SESSION) else None

    def __call__(
        self,
        method: str,
        path: str,
        query: str,
        headers: Mapping[str, str],
        body: bytes | None,
        view: BodyView | None,
    ) -> Extracted:
        if path.endswith("/") and len(path) > 1:
            path = path[:-1]  # express ignores one trailing slash
        # The first three words decide every form: ["", "api", word, third, rest]; so
        # n == 5 means "five or more" and parts[4] may hold further slashes.
        parts = path.split("/", 4)
        n = len(parts)
        if n < 3:
            if n == 2 and (parts[1] == "ws" or parts[1].lower() == "ws"):
                value = query_get(query, "session")
                if value is None or value == "" or value == "*":
                    return None  # "*" (the default) subscribes to every session
                return self._check(value, _QUERY_SRC)
            return None
        head = parts[1]
        if head != "api" and head.lower() != "api":
            if n == 5 and head == "webhooks" and parts[2] == "chatwoot" and "/" not in parts[4]:
                return self._check(path_segment(parts[3]), _PATH)
            return None
        word = parts[2]
        kind = _LOOKUP.get(word)
        if kind is None:
            kind = _LOOKUP.get(word.lower())
            if kind is None:
                # /api/{session}/<resource>/...; /api/<unknown> alone is a top-level call.
                return self._check(path_segment(word), _PATH) if n >= 4 else None
        return self._api(kind, method, parts, n, query, headers, body, view)

    def _api(
        self,
        kind: int,
        method: str,
        parts: list[str],
        n: int,
        query: str,
        headers: Mapping[str, str],
        body: bytes | None,
        view: BodyView | None,
    ) -> Extracted:
        """/api/<word>/... for one of WAHA's own top-level words."""
        if kind <= _SEND:
            # /api/<word> exactly; /api/send/<a> or /api/send/<a>/<b>
            deep_ok = n == 4 or (n == 5 and "/" not in parts[4])
            if not (deep_ok if kind == _SEND else n == 3):
                return None  # e.g. /api/sendText/x is no WAHA route
            if method == "POST" or method == "PUT":
                return self._body(
                    "session", query, headers, body, view, self._default, kind == _BODY_OR_QUERY
                )
            if method == "GET":  # the deprecated GET /api/sendText?session=
                return self._query(query, self._default)
            return None
        if kind == _QUERY:
            return self._query(query, self._default) if n == 3 else None
        if kind == _SESSIONS:
            return self._sessions(method, parts, n, headers, body, view)
        if kind == _FILES:  # /api/files/{session}/<file>
            return self._check(path_segment(parts[3]), _PATH) if n == 5 else None
        if kind == _CONTACTS:
            if n == 5:
                return None
            if method == "GET":
                return self._query(query, self._default)
            if method == "POST":  # /api/contacts/block|unblock
                return self._body("session", query, headers, body, view, self._default, False)
            return None
        if kind == _APPS:
            session, slash, _ = parts[4].partition("/") if n == 5 else ("", "", "")
            if slash:  # /api/apps/{app}/{session}/..., e.g. .../purge, .../cache/stats
                return self._check(path_segment(session), _PATH)
            if n == 3:
                if method == "GET":
                    return self._query(query, None)
                if method == "POST":
                    return self._body("session", query, headers, body, view, None, False)
            return None  # /api/apps/{id}[/purge], /api/apps/chatwoot/locales
        if kind == _SERVER:  # /api/server/debug/browser/trace/{session}
            if n == 5 and parts[3].lower() == "debug":
                rest = parts[4].split("/")
                if len(rest) == 3 and rest[0].lower() == "browser" and rest[1].lower() == "trace":
                    return self._check(path_segment(rest[2]), _PATH)
            return None
        return None  # _RESERVED

    def _sessions(
        self,
        method: str,
        parts: list[str],
        n: int,
        headers: Mapping[str, str],
        body: bytes | None,
        view: BodyView | None,
    ) -> Extracted:
        if n == 3:
            # GET lists this instance's sessions (unscoped); POST creates one named by
            # body `name` (WAHA invents a name when it is missing: unscoped too).
            if method == "POST":
                return self._body("name", "", headers, body, view, None, False)
            return None
        word = parts[3]  # n is 4 (/api/sessions/x) or 5 (deeper)
        if n == 4 and method == "POST" and word.lower() in _DEPRECATED_SESSION_ACTIONS:
            # Deprecated POST /api/sessions/start|stop|logout {"name": ...}: the word is
            # an action here, while GET /api/sessions/start names a session "start".
            return self._body("name", "", headers, body, view, None, False)
        return self._check(path_segment(word), _PATH)

    def _query(self, query: str, default: str | None) -> Extracted:
        value = query_get(query, "session")
        if value is None:
            return default
        return self._check(value, _QUERY_SRC)

    def _body(
        self,
        field: str,
        query: str,
        headers: Mapping[str, str],
        body: bytes | None,
        view: BodyView | None,
        default: str | None,
        or_query: bool,
    ) -> Extracted:
        if view is None:
            view = BodyView(headers, body, self._limit)
        value = view.field((field,), form=True)
        if value is NEEDS_BODY:
            return NEEDS_BODY
        if value is UNUSABLE:
            # Unread body (multipart, too large, not an object): only the query can tell;
            # guessing "default" could send another session's upload astray.
            return self._query(query, None) if or_query else None
        if value is ABSENT:
            return self._query(query, default) if or_query else default
        return self._check.any(value, f"body field {field!r}")
