"""The config loader's building blocks: where a problem is (``At``), ``${VAR}`` expansion,
and converters, each turning one raw YAML value into its model value or raising
``_Invalid``; ``section`` and ``list_of`` nest them, recording every problem under its own
path (``path.to.key: message``, never echoing a secret). The schema itself is in
``router.config.loader``."""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final
from urllib.parse import urlsplit

from router.config.model import (
    Secret,
)
from router.config.units import parse_duration, parse_size
from router.redis_url import store_url_problem

# -- problems and paths ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class At:
    """Where a value sits in the document, and the shared list its problems go to."""

    path: str
    problems: list[str]

    def key(self, key: object) -> At:
        return At(f"{self.path}.{key}" if self.path else str(key), self.problems)

    def index(self, index: int) -> At:
        return At(f"{self.path}[{index}]", self.problems)

    def add(self, message: str) -> None:
        self.problems.append(f"{self.path or 'config'}: {message}")

    def clean(self, *keys: str) -> bool:
        """Whether no problem was recorded at, under or directly on a parent of these dotted
        keys (e.g. ``listen: 5``), so a cross-field check can trust their values."""
        for key in keys:
            path = self.key(key).path
            marks = [f"{path}.", f"{path}["]
            parts = key.split(".")
            marks += [f"{self.key('.'.join(parts[:n])).path}:" for n in range(1, len(parts) + 1)]
            if any(p.startswith(tuple(marks)) for p in self.problems):
                return False
        return True


class _Invalid(Exception):
    """The value is wrong; the message is recorded after the value's path."""


Invalid = _Invalid  # for converters written outside this module


class _Unresolved:
    """Stands for a string whose ``${...}`` reference was malformed (already reported)."""


_BAD: Final = object()  # a value that failed conversion
Converter = Callable[[Any, At], Any]


def convert(conv: Converter, value: Any, at: At) -> Any:
    """Run one converter; _BAD (with the problem recorded) if the value is wrong."""
    if isinstance(value, _Unresolved):
        return _BAD
    try:
        return conv(value, at)
    except _Invalid as exc:
        at.add(str(exc))
        return _BAD


# -- ${VAR} expansion (after parsing, so an env value can never inject YAML) ---------------


class _Expanded(str):
    """A string that held a ``${...}`` reference: numeric fields may parse it as a number."""

    __slots__ = ()


_REFERENCE = re.compile(r"\$\$\{|\$\{(?P<body>[^}]*)\}|\$\{")
_BODY = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>.*))?", re.DOTALL)
_REFERENCE_HELP = (
    "invalid variable reference (use ${NAME} or ${NAME:-default}; $${ for a literal ${)"
)


def expand_tree(node: Any, env: Mapping[str, str], at: At) -> Any:
    if isinstance(node, dict):
        return {k: expand_tree(v, env, at.key(k)) for k, v in node.items()}
    if isinstance(node, list):
        return [expand_tree(v, env, at.index(i)) for i, v in enumerate(node)]
    if isinstance(node, str) and "${" in node:
        return _expand_string(node, env, at)
    return node


def _expand_string(text: str, env: Mapping[str, str], at: At) -> _Expanded | _Unresolved:
    broken = False

    def substitute(match: re.Match[str]) -> str:
        nonlocal broken
        if match.group(0) == "$${":
            return "${"
        body = _BODY.fullmatch(match.group("body") or "")
        if body is None or "${" in (body.group("default") or ""):
            broken = True
            return ""
        value = env.get(body.group("name"), "")
        default = body.group("default")
        # `:-` as in the shell: the default also replaces a set-but-empty variable.
        return value if value or default is None else default

    result = _REFERENCE.sub(substitute, text)
    if broken:
        at.add(_REFERENCE_HELP)  # never echo the string: it may be a secret
        return _Unresolved()
    return _Expanded(result)


# -- scalar converters ----------------------------------------------------------------------


def _type_name(value: Any) -> str:
    if isinstance(value, str):
        return "str"  # not the value: a misplaced ${VAR} could hold a secret
    return "null" if value is None else type(value).__name__


def _as_int(value: Any) -> int:
    if isinstance(value, _Expanded) and re.fullmatch(r"\s*[+-]?\d+\s*", value):
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Invalid(f"must be an integer (got {_type_name(value)})")
    return value


def _as_number(value: Any) -> float:
    if isinstance(value, _Expanded):
        try:
            value = float(value)
        except ValueError:
            raise _Invalid(f"must be a number (got {_type_name(value)})") from None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Invalid(f"must be a number (got {_type_name(value)})")
    if not math.isfinite(value):
        raise _Invalid("must be a finite number")
    return float(value)


def _as_str(value: Any) -> str:
    if not isinstance(value, str):
        raise _Invalid(f"must be a string (got {_type_name(value)})")
    return str(value)  # a plain str, not an _Expanded


def integer(lo: int, hi: int | None = None, *, nullable: bool = False) -> Converter:
    def conv(value: Any, at: At) -> int | None:
        if nullable and (value is None or value == ""):
            return None
        number = _as_int(value)
        _check_range(number, lo, hi)
        return number

    return conv


def number(lo: float, hi: float | None = None, *, above: bool = False) -> Converter:
    """A float >= lo (> lo with ``above``) and <= hi."""

    def conv(value: Any, at: At) -> float:
        number = _as_number(value)
        if above and number <= lo:
            raise _Invalid(f"must be > {lo:g} (got {number:g})")
        _check_range(number, lo, hi)
        return number

    return conv


def _check_range(number: float, lo: float, hi: float | None) -> None:
    if hi is not None and not lo <= number <= hi:
        raise _Invalid(f"must be between {lo:g} and {hi:g} (got {number:g})")
    if number < lo:
        raise _Invalid(f"must be >= {lo:g} (got {number:g})")


def duration(*, zero_ok: bool = False) -> Converter:
    def conv(value: Any, at: At) -> float:
        try:
            seconds = parse_duration(value)
        except ValueError as exc:
            raise _Invalid(str(exc)) from None
        if seconds == 0 and not zero_ok:
            raise _Invalid("must be > 0")
        return seconds

    return conv


def size(*, zero_ok: bool = False) -> Converter:
    def conv(value: Any, at: At) -> int:
        try:
            size = parse_size(value)
        except ValueError as exc:
            raise _Invalid(str(exc)) from None
        if size == 0 and not zero_ok:
            raise _Invalid("must be > 0")
        return size

    return conv


def text(*, pattern: str | None = None, what: str = "") -> Converter:
    """A non-empty string, optionally matching ``pattern`` (``what`` says what it should be)."""

    def conv(value: Any, at: At) -> str:
        text = _as_str(value)
        if not text:
            raise _Invalid("must not be empty")
        if pattern is not None and not re.fullmatch(pattern, text):
            raise _Invalid(f"{what} (got {text!r})")
        return text

    return conv


def plain_str(value: Any, at: At) -> str:
    return _as_str(value)


def choice(*options: str, upper: bool = False) -> Converter:
    def conv(value: Any, at: At) -> str:
        text = _as_str(value)
        text = text.upper() if upper else text
        if text not in options:
            raise _Invalid(f"must be one of {', '.join(options)} (got {value!r})")
        return text

    return conv


def boolean(value: Any, at: At) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, _Expanded) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise _Invalid(f"must be true or false (got {value!r})")


def regex(value: Any, at: At) -> re.Pattern[str]:
    text = _as_str(value)
    try:
        return re.compile(text)
    except re.error as exc:
        raise _Invalid(f"invalid regex {text!r}: {exc}") from None


def url_path(*, session: bool = False) -> Converter:
    def conv(value: Any, at: At) -> str:
        text = _as_str(value)
        if not text.startswith("/"):
            raise _Invalid(f"must start with '/' (got {text!r})")
        if session and "{session}" not in text:
            raise _Invalid(f"must contain {{session}} (got {text!r})")
        return text

    return conv


_HTTP_METHODS: Final = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"}
)


def method(value: Any, at: At) -> str:
    text = _as_str(value).upper()
    if text not in _HTTP_METHODS:
        raise _Invalid(
            f"unknown HTTP method {value!r} (use one of {', '.join(sorted(_HTTP_METHODS))})"
        )
    return text


_HEADER_NAME: Final = text(
    pattern=r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+", what="must be a valid header name"
)


def header(value: Any, at: At) -> str:
    return str(_HEADER_NAME(value, at)).lower()  # HTTP header names are case-insensitive


def _http_url_problem(text: str) -> str | None:
    """Why ``text`` is not a usable http(s) URL, without echoing it (it may hold a token)."""
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 -- raises ValueError on a bad port
    except ValueError:
        return "must be a valid http:// or https:// URL"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "must be an http:// or https:// URL with a host"
    return None


def http_url(value: Any, at: At) -> str:
    problem = _http_url_problem(_as_str(value))
    if problem:
        raise _Invalid(problem)
    return str(value)


def instance_url(value: Any, at: At) -> str:
    url = http_url(value, at)
    parts = urlsplit(url)
    # Credentials in the URL would show in logs, repr and the admin API: api_key is the place.
    if parts.username is not None or parts.password is not None:
        raise _Invalid("must not contain credentials (use api_key)")
    if parts.query or parts.fragment:
        raise _Invalid("must not contain a query or fragment")
    return url.rstrip("/")  # request paths are appended to it


def secret(value: Any, at: At) -> Secret | None:
    """An optional secret: null or "" (e.g. an unset ${VAR}) means not set."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise _Invalid(f"must be a string (got {_type_name(value)})")
    return Secret(str(value))


def store_url(value: Any, at: At) -> Secret | None:
    url = secret(value, at)
    if url is None:
        return None
    problem = store_url_problem(url.value)  # never quotes the URL (it may hold a password)
    if problem:
        raise _Invalid(problem)
    return url


def secret_url(value: Any, at: At) -> Secret | None:
    url = secret(value, at)
    problem = _http_url_problem(url.value) if url else None
    if problem:
        raise _Invalid(problem)
    return url


def status(value: Any, at: At) -> int:
    code = _as_int(value)
    _check_range(code, 100, 599)
    return code


def fan_out(value: Any, at: At) -> tuple[str, str]:
    parts = _as_str(value).split()
    if len(parts) != 2:
        raise _Invalid(f"must be 'METHOD /path' (got {value!r})")
    return method(parts[0], at), url_path()(parts[1], at)


# -- collections and sections ------------------------------------------------------------


def list_of(
    item: Converter,
    *,
    make: Callable[[Iterable[Any]], Any] = tuple,
    non_empty: bool = False,
    skip_empty: bool = False,
    check: Callable[[tuple[Any, ...], At], None] | None = None,
) -> Converter:
    """A YAML list (null = empty) of ``item``; ``skip_empty`` drops "" and null entries."""

    def conv(value: Any, at: At) -> Any:
        if value is None:
            value = []
        if not isinstance(value, list):
            raise _Invalid(f"must be a list (got {_type_name(value)})")
        if non_empty and not value:
            raise _Invalid("must not be empty")
        results = []
        for index, raw in enumerate(value):
            if skip_empty and (raw is None or raw == ""):
                continue
            result = convert(item, raw, at.index(index))
            if result is not _BAD:
                results.append(result)
        if check is not None:
            check(tuple(results), at)
        return make(results)

    return conv


Check = Callable[[Any, At], None]


def section(
    make: Callable[..., Any],
    table: Mapping[str, Converter],
    *,
    required: Mapping[str, Any] | None = None,
    check: Check | None = None,
) -> Converter:
    """A mapping read through ``table``; missing keys keep the model's defaults.

    ``required`` maps each required key to a placeholder used when it is missing or bad, so
    the object (and the cross-field ``check``) can still be built while problems pile up.
    ``check`` should use ``at.clean(...)`` to skip checks built on values that were wrong.
    """
    required = required or {}

    def conv(value: Any, at: At) -> Any:
        if value is None and not required:
            value = {}  # `health:` with nothing under it
        if not isinstance(value, dict):
            raise _Invalid(f"must be a mapping (got {_type_name(value)})")
        fields = _read_fields(value, table, at)
        for key, placeholder in required.items():
            if key not in value:
                at.key(key).add("required")
            fields.setdefault(key, placeholder)
        result = make(**fields)
        if check is not None:
            check(result, at)
        return result

    return conv


def _read_fields(value: dict[Any, Any], table: Mapping[str, Converter], at: At) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for key, raw in value.items():
        conv = table.get(key) if isinstance(key, str) else None
        if conv is None:
            at.key(key).add(_unknown_key(key, table))
            continue
        result = convert(conv, raw, at.key(key))
        if result is not _BAD:
            fields[key] = result
    return fields


def _unknown_key(key: object, table: Mapping[str, Converter]) -> str:
    close = difflib.get_close_matches(str(key), list(table), n=1)
    return f"unknown key (did you mean {close[0]!r}?)" if close else "unknown key"


