"""``SessionExtractor``: which WhatsApp session a request is about."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Final, TypeAlias

from router.config.model import Profile, SessionsConfig
from router.sessions.common import (
    NEEDS_BODY,
    BodyView,
    Extracted,
    IdCheck,
    Missing,
    path_segment,
    query_get,
)
from router.sessions.evolution import EvolutionProfile
from router.sessions.rules import HEADER, JSON, PATH, QUERY, compile_rules
from router.sessions.waha import WahaProfile

ProfileRules: TypeAlias = Callable[
    [str, str, str, Mapping[str, str], "bytes | None", "BodyView | None"], Extracted
]

SESSION_HEADER: Final = "x-session-id"
_HEADER_SRC: Final = "header 'X-Session-Id'"


def _profile_rules(profile: Profile, check: IdCheck, body_limit: int) -> ProfileRules | None:
    if profile == "waha":
        return WahaProfile(check, body_limit)
    if profile == "evolution":
        return EvolutionProfile(check, body_limit)
    if profile == "generic":
        return None  # the X-Session-Id header only, which every profile falls back to
    raise ValueError(f"unknown profile {profile!r}")


class SessionExtractor:
    """Finds the session id of a request; built once per config, called on every request.

    Order: the user's ``sessions.rules`` (in order), then the profile's built-in rules
    (``waha``, ``evolution``; ``generic`` has none), then, with every profile, the
    ``X-Session-Id`` header as a last resort. The first source that names an id wins.

    ``extract(method, path, query, headers, body)`` takes the upper-case method, the raw
    percent-encoded path, the raw query string (no ``?``), lower-case header names and
    the body if already read. It returns:

    - the session id: path ids are percent-decoded, query/form ids form-decoded, and
      every id must fullmatch ``sessions.id_pattern`` (and not be ``.`` or ``..``), else
      ``InvalidSessionId`` (HTTP 400) is raised;
    - ``None``: no rule names a session (an unscoped request);
    - ``NEEDS_BODY``: a JSON rule applies and ``body`` was None. Read the body and call
      again with it. If it turns out longer than ``body_limit``, call again with
      ``b""`` (or any prefix longer than the limit): body rules then yield nothing.
      Bodies the headers already rule out (multipart, a Content-Length over the limit,
      no body at all) never cause NEEDS_BODY.
    """

    __slots__ = ("_check", "_limit", "_profile", "_rules")

    def __init__(self, sessions: SessionsConfig, profile: Profile) -> None:
        self._check = IdCheck(sessions.id_pattern)
        self._rules = compile_rules(sessions.rules)
        self._limit = sessions.json_body_limit
        self._profile = _profile_rules(profile, self._check, sessions.json_body_limit)

    @property
    def body_limit(self) -> int:
        """Bodies longer than this are never parsed (``sessions.json_body_limit``)."""
        return self._limit

    def extract(
        self,
        method: str,
        path: str,
        query: str,
        headers: Mapping[str, str],
        body: bytes | None,
        doc: object = None,
    ) -> Extracted:
        """``doc``: the JSON body already parsed, if the caller has it (not parsed again)."""
        check = self._check
        view: BodyView | None = None
        if doc is not None and body is not None:
            view = BodyView.parsed(headers, doc, len(body), self._limit)
        for rule in self._rules:
            if rule.methods is not None and method not in rule.methods:
                continue
            kind = rule.kind
            if kind == PATH:
                assert rule.path is not None
                match = rule.path.search(path)
                if match is None:
                    continue
                raw = match.group("session")
                if raw is None:
                    continue  # the group sat in an optional branch that did not match
                return check(path_segment(raw), rule.source)
            if rule.path is not None and rule.path.search(path) is None:
                continue
            if kind == HEADER:
                value = headers.get(rule.field)
                if value is not None:
                    return check(value, rule.source)
            elif kind == QUERY:
                value = query_get(query, rule.field)
                if value is not None:
                    return check(value, rule.source)
            elif kind == JSON:
                if view is None:
                    view = BodyView(headers, body, self._limit)
                found = view.field(rule.json_path, form=False)
                if found is NEEDS_BODY:
                    return NEEDS_BODY
                if not isinstance(found, Missing):
                    return check.any(found, rule.source)
        profile = self._profile
        if profile is not None:
            result = profile(method, path, query, headers, body, view)
            if result is not None:
                return result
        value = headers.get(SESSION_HEADER)
        if value is None:
            return None
        return check(value, _HEADER_SRC)
