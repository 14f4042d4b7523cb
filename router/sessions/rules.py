"""The user's ``sessions.rules``, compiled once into flat objects the hot loop can test."""

from __future__ import annotations

from typing import Final

from router.config.model import SessionRule
from router.errors import ConfigError

PATH: Final = 0
HEADER: Final = 1
QUERY: Final = 2
JSON: Final = 3


class UserRule:
    """One rule with its source decided up front.

    ``path`` is the extraction regex for a PATH rule and a filter for the other kinds; it
    is applied with ``search`` to the raw (still percent-encoded) path, so anchor it with
    ``^`` to match from the start.
    """

    __slots__ = ("field", "json_path", "kind", "methods", "path", "source")

    def __init__(self, rule: SessionRule, index: int) -> None:
        where = f"sessions.rules[{index}]"
        sources = [
            name
            for name, value in (("header", rule.header), ("query", rule.query), ("json", rule.json))
            if value is not None
        ]
        if len(sources) > 1:
            raise ConfigError([f"{where}: give one of header, query, json (got {sources})"])
        self.methods = rule.methods
        self.path = rule.path
        self.field = ""
        self.json_path: tuple[str, ...] = ()
        if rule.header is not None:
            self.kind = HEADER
            self.field = rule.header.lower()
            self.source = f"header {rule.header!r}"
        elif rule.query is not None:
            self.kind = QUERY
            self.field = rule.query
            self.source = f"query parameter {rule.query!r}"
        elif rule.json is not None:
            self.kind = JSON
            self.json_path = tuple(rule.json.split("."))
            if not all(self.json_path):
                raise ConfigError([f"{where}.json: empty name in {rule.json!r}"])
            self.source = f"JSON field {rule.json!r}"
        elif rule.path is not None:
            if "session" not in rule.path.groupindex:
                raise ConfigError([f"{where}.path: needs a (?P<session>...) group"])
            self.kind = PATH
            self.source = "path"
        else:
            raise ConfigError([f"{where}: give one of path, header, query, json"])


def compile_rules(rules: tuple[SessionRule, ...]) -> tuple[UserRule, ...]:
    return tuple(UserRule(rule, i) for i, rule in enumerate(rules))
