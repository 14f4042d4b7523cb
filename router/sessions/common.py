"""Building blocks shared by the user rules and the built-in profiles: the NEEDS_BODY
sentinel, id validation, query lookup and the lazily parsed request body.

Everything here runs on every proxied request, so it avoids regexes and allocations
wherever a plain string test decides.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Mapping
from typing import Final, Literal, TypeAlias
from urllib.parse import unquote, unquote_plus

from router.errors import InvalidSessionId


class _NeedsBody(enum.Enum):
    NEEDS_BODY = "NEEDS_BODY"

    def __repr__(self) -> str:
        return "NEEDS_BODY"

    def __str__(self) -> str:
        return "NEEDS_BODY"


#: Returned by ``extract`` when a JSON rule applies but the body was not passed in.
NEEDS_BODY: Final = _NeedsBody.NEEDS_BODY
NeedsBody: TypeAlias = Literal[_NeedsBody.NEEDS_BODY]
#: What ``extract`` returns: a valid session id, ``None`` (unscoped) or NEEDS_BODY.
Extracted: TypeAlias = str | NeedsBody | None


class Missing(enum.Enum):
    """Why a body field gave no value."""

    UNUSABLE = 0  # no object to read: too large, malformed, not an object, multipart
    ABSENT = 1  # a JSON object / form without that field


UNUSABLE: Final = Missing.UNUSABLE
ABSENT: Final = Missing.ABSENT

# "." and ".." pass the default id pattern, but a session id ends up in instance paths
# such as /api/sessions/{session}/start, where they would walk up the URL.
_DOT_NAMES: Final = frozenset({".", ".."})
_CLIP: Final = 64
_SEEN_MAX: Final = 1 << 16


def clip(value: str) -> str:
    """``value`` quoted and escaped for an error message, at most ~64 characters."""
    shown = repr(value[:_CLIP])
    if len(value) > _CLIP or len(shown) > _CLIP + 2:
        return shown[: _CLIP + 1] + "..."  # escapes can make the repr much longer
    return shown


class IdCheck:
    """Validates ids with ``sessions.id_pattern``.

    ``fullmatch`` is used (not ``match``): with ``match``, a pattern ending in ``$`` would
    let a trailing newline through.
    """

    __slots__ = ("_fullmatch", "_seen")

    def __init__(self, pattern: re.Pattern[str]) -> None:
        self._fullmatch = pattern.fullmatch
        # Ids already found valid: a set lookup is several times cheaper than the regex
        # and a fleet has a bounded number of sessions. Cleared when full, so a client
        # cycling through random ids costs memory no more than _SEEN_MAX strings.
        self._seen: set[str] = set()

    def __call__(self, value: str, source: str) -> str:
        if value in self._seen:
            return value
        if self._fullmatch(value) is None or value in _DOT_NAMES:
            raise InvalidSessionId(f"invalid session id in {source}: {clip(value)}")
        if len(self._seen) >= _SEEN_MAX:
            self._seen.clear()
        self._seen.add(value)
        return value

    def ok(self, value: str) -> bool:
        return self._fullmatch(value) is not None and value not in _DOT_NAMES

    def any(self, value: object, source: str) -> str:
        """Like ``__call__`` for a decoded JSON value, which must be a string."""
        if isinstance(value, str):
            return self(value, source)
        raise InvalidSessionId(f"{source} must be a string, not {_json_type(value)}")


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, list):
        return "an array"
    return "an object"


def path_segment(raw: str) -> str:
    """A path segment, percent-decoded (``+`` stays a plus in paths)."""
    return unquote(raw) if "%" in raw else raw


def query_get(query: str, name: str) -> str | None:
    """The first value of ``name`` in a form-encoded query string, decoded, or None.

    Splits on ``&`` only and takes the first occurrence, as Node's URLSearchParams.get()
    does. A key without ``=`` has the value "".
    """
    if not query or (name not in query and "%" not in query):
        return None
    for part in query.split("&"):
        key, _, value = part.partition("=")
        if key != name:
            if "%" not in key and "+" not in key:
                continue
            if unquote_plus(key) != name:
                continue
        if "%" in value or "+" in value:
            return unquote_plus(value)
        return value
    return None


def _content_kind(headers: Mapping[str, str]) -> int:
    """0: JSON (or unknown, try it), 1: urlencoded form, 2: multipart (never read)."""
    ctype = headers.get("content-type")
    if not ctype:
        return 0
    ctype = ctype.lstrip().lower()
    if ctype.startswith("multipart/"):
        return 2
    if ctype.startswith("application/x-www-form-urlencoded"):
        return 1
    return 0


class BodyView:
    """One request body, parsed at most once, however many rules read it.

    Size rules: a ``Content-Length`` above ``limit`` makes the body unusable without
    reading it; so does a passed-in body longer than ``limit`` (a prefix of limit+1
    bytes is enough) and ``b""`` when the headers announce a body (the caller could not
    buffer it). Multipart bodies are never asked for, so uploads are never buffered just
    to look for a session id.
    """

    __slots__ = ("_body", "_headers", "_kind", "_limit", "_obj")

    def __init__(self, headers: Mapping[str, str], body: bytes | None, limit: int) -> None:
        self._headers = headers
        self._body = body
        self._limit = limit
        self._kind = _content_kind(headers)
        self._obj: dict[str, object] | Missing | NeedsBody | None = None

    @classmethod
    def parsed(cls, headers: Mapping[str, str], doc: object, size: int, limit: int) -> BodyView:
        """A JSON body already parsed (``doc``, from ``size`` bytes): not parsed again."""
        view = cls(headers, None, limit)
        view._obj = doc if isinstance(doc, dict) and size <= limit else UNUSABLE
        return view

    def field(self, path: tuple[str, ...], *, form: bool) -> object:
        """The value at the dotted ``path``, or NEEDS_BODY, UNUSABLE or ABSENT.

        ``form``: also read ``application/x-www-form-urlencoded`` bodies (one level).
        """
        kind = self._kind
        if kind == 2 or (kind == 1 and not form):
            return UNUSABLE
        obj = self._obj
        if obj is None:
            obj = self._obj = self._load()
        if obj is NEEDS_BODY or obj is UNUSABLE:
            return obj
        assert isinstance(obj, dict)
        value: object = obj
        for key in path:
            if not isinstance(value, dict) or key not in value:
                return ABSENT
            value = value[key]
        return value

    def _load(self) -> dict[str, object] | Missing | NeedsBody:
        body = self._body
        if body is None:
            return self._expect()
        if len(body) > self._limit:
            return UNUSABLE
        if not body:
            # Node's body parsers turn an empty body into {}. But b"" for a request whose
            # headers announce a body means "not buffered": nothing can be read from it.
            return {} if self._expect() == {} else UNUSABLE
        if self._kind == 1:
            return _parse_form(body)
        return _parse_json(body)

    def _expect(self) -> dict[str, object] | Missing | NeedsBody:
        """Without the body: is there one worth asking for?"""
        headers = self._headers
        if "transfer-encoding" in headers:
            return NEEDS_BODY
        length = headers.get("content-length")
        if length is None:
            return {}  # no framing header: the request has no body (RFC 9112 6.3)
        length = length.strip()
        if not (length.isascii() and length.isdigit()):
            return UNUSABLE
        size = int(length)
        if size == 0:
            return {}
        if size > self._limit:
            return UNUSABLE
        return NEEDS_BODY


def _parse_json(body: bytes) -> dict[str, object] | Missing:
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError):
        # ValueError covers JSONDecodeError, UnicodeDecodeError and the int digit limit;
        # RecursionError comes from deeply nested arrays/objects.
        return UNUSABLE
    return obj if isinstance(obj, dict) else UNUSABLE


def _parse_form(body: bytes) -> dict[str, object]:
    fields: dict[str, object] = {}
    for part in body.decode("latin-1").split("&"):
        if not part:
            continue
        key, _, value = part.partition("=")
        key = unquote_plus(key)
        if key not in fields:  # first occurrence wins, as with the query
            fields[key] = unquote_plus(value)
    return fields
