"""YAML -> ``Config``: env expansion, then a table-driven walk that collects every problem.

Each section is a table ``key -> converter``. A converter turns one raw YAML value into its
model value or raises ``_Invalid``; nested converters record their own problems under their
own path. Problems read ``path.to.key: message`` and never echo a secret.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import math
import os
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from functools import partial
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import yaml

from router.config.model import (
    AdminConfig,
    AlertsConfig,
    Config,
    FailoverConfig,
    HealthConfig,
    InstanceCall,
    InstanceConfig,
    LimitsConfig,
    ListenConfig,
    LogConfig,
    MetricsConfig,
    PassiveConfig,
    PlacementConfig,
    RetryConfig,
    Secret,
    SessionRule,
    SessionsConfig,
    StatusCall,
    StoreConfig,
    WebhooksConfig,
    WebhookTarget,
)
from router.config.units import parse_duration, parse_size
from router.errors import ConfigError
from router.redis_url import store_url_problem

__all__ = ["check_config", "load_config", "parse_config", "redacted"]


# -- problems and paths ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class _At:
    """Where a value sits in the document, and the shared list its problems go to."""

    path: str
    problems: list[str]

    def key(self, key: object) -> _At:
        return _At(f"{self.path}.{key}" if self.path else str(key), self.problems)

    def index(self, index: int) -> _At:
        return _At(f"{self.path}[{index}]", self.problems)

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


class _Unresolved:
    """Stands for a string whose ``${...}`` reference was malformed (already reported)."""


_BAD: Final = object()  # a value that failed conversion
Converter = Callable[[Any, _At], Any]


def _convert(conv: Converter, value: Any, at: _At) -> Any:
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


def _expand_tree(node: Any, env: Mapping[str, str], at: _At) -> Any:
    if isinstance(node, dict):
        return {k: _expand_tree(v, env, at.key(k)) for k, v in node.items()}
    if isinstance(node, list):
        return [_expand_tree(v, env, at.index(i)) for i, v in enumerate(node)]
    if isinstance(node, str) and "${" in node:
        return _expand_string(node, env, at)
    return node


def _expand_string(text: str, env: Mapping[str, str], at: _At) -> _Expanded | _Unresolved:
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


def _integer(lo: int, hi: int | None = None, *, nullable: bool = False) -> Converter:
    def conv(value: Any, at: _At) -> int | None:
        if nullable and (value is None or value == ""):
            return None
        number = _as_int(value)
        _check_range(number, lo, hi)
        return number

    return conv


def _number(lo: float, hi: float | None = None, *, above: bool = False) -> Converter:
    """A float >= lo (> lo with ``above``) and <= hi."""

    def conv(value: Any, at: _At) -> float:
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


def _duration(*, zero_ok: bool = False) -> Converter:
    def conv(value: Any, at: _At) -> float:
        try:
            seconds = parse_duration(value)
        except ValueError as exc:
            raise _Invalid(str(exc)) from None
        if seconds == 0 and not zero_ok:
            raise _Invalid("must be > 0")
        return seconds

    return conv


def _size(*, zero_ok: bool = False) -> Converter:
    def conv(value: Any, at: _At) -> int:
        try:
            size = parse_size(value)
        except ValueError as exc:
            raise _Invalid(str(exc)) from None
        if size == 0 and not zero_ok:
            raise _Invalid("must be > 0")
        return size

    return conv


def _text(*, pattern: str | None = None, what: str = "") -> Converter:
    """A non-empty string, optionally matching ``pattern`` (``what`` says what it should be)."""

    def conv(value: Any, at: _At) -> str:
        text = _as_str(value)
        if not text:
            raise _Invalid("must not be empty")
        if pattern is not None and not re.fullmatch(pattern, text):
            raise _Invalid(f"{what} (got {text!r})")
        return text

    return conv


def _plain_str(value: Any, at: _At) -> str:
    return _as_str(value)


def _choice(*options: str, upper: bool = False) -> Converter:
    def conv(value: Any, at: _At) -> str:
        text = _as_str(value)
        text = text.upper() if upper else text
        if text not in options:
            raise _Invalid(f"must be one of {', '.join(options)} (got {value!r})")
        return text

    return conv


def _boolean(value: Any, at: _At) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, _Expanded) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise _Invalid(f"must be true or false (got {value!r})")


def _regex(value: Any, at: _At) -> re.Pattern[str]:
    text = _as_str(value)
    try:
        return re.compile(text)
    except re.error as exc:
        raise _Invalid(f"invalid regex {text!r}: {exc}") from None


def _url_path(*, session: bool = False) -> Converter:
    def conv(value: Any, at: _At) -> str:
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


def _method(value: Any, at: _At) -> str:
    text = _as_str(value).upper()
    if text not in _HTTP_METHODS:
        raise _Invalid(
            f"unknown HTTP method {value!r} (use one of {', '.join(sorted(_HTTP_METHODS))})"
        )
    return text


_HEADER_NAME: Final = _text(
    pattern=r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+", what="must be a valid header name"
)


def _header(value: Any, at: _At) -> str:
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


def _http_url(value: Any, at: _At) -> str:
    problem = _http_url_problem(_as_str(value))
    if problem:
        raise _Invalid(problem)
    return str(value)


def _instance_url(value: Any, at: _At) -> str:
    url = _http_url(value, at)
    parts = urlsplit(url)
    # Credentials in the URL would show in logs, repr and the admin API: api_key is the place.
    if parts.username is not None or parts.password is not None:
        raise _Invalid("must not contain credentials (use api_key)")
    if parts.query or parts.fragment:
        raise _Invalid("must not contain a query or fragment")
    return url.rstrip("/")  # request paths are appended to it


def _secret(value: Any, at: _At) -> Secret | None:
    """An optional secret: null or "" (e.g. an unset ${VAR}) means not set."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise _Invalid(f"must be a string (got {_type_name(value)})")
    return Secret(str(value))


def _store_url(value: Any, at: _At) -> Secret | None:
    secret = _secret(value, at)
    if secret is None:
        return None
    problem = store_url_problem(secret.value)  # never quotes the URL (it may hold a password)
    if problem:
        raise _Invalid(problem)
    return secret


def _secret_url(value: Any, at: _At) -> Secret | None:
    secret = _secret(value, at)
    problem = _http_url_problem(secret.value) if secret else None
    if problem:
        raise _Invalid(problem)
    return secret


def _status(value: Any, at: _At) -> int:
    number = _as_int(value)
    _check_range(number, 100, 599)
    return number


def _fan_out(value: Any, at: _At) -> tuple[str, str]:
    parts = _as_str(value).split()
    if len(parts) != 2:
        raise _Invalid(f"must be 'METHOD /path' (got {value!r})")
    return _method(parts[0], at), _url_path()(parts[1], at)


# -- collections and sections ------------------------------------------------------------


def _list(
    item: Converter,
    *,
    make: Callable[[Iterable[Any]], Any] = tuple,
    non_empty: bool = False,
    skip_empty: bool = False,
    check: Callable[[tuple[Any, ...], _At], None] | None = None,
) -> Converter:
    """A YAML list (null = empty) of ``item``; ``skip_empty`` drops "" and null entries."""

    def conv(value: Any, at: _At) -> Any:
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
            result = _convert(item, raw, at.index(index))
            if result is not _BAD:
                results.append(result)
        if check is not None:
            check(tuple(results), at)
        return make(results)

    return conv


Check = Callable[[Any, _At], None]


def _section(
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

    def conv(value: Any, at: _At) -> Any:
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


def _read_fields(value: dict[Any, Any], table: Mapping[str, Converter], at: _At) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for key, raw in value.items():
        conv = table.get(key) if isinstance(key, str) else None
        if conv is None:
            at.key(key).add(_unknown_key(key, table))
            continue
        result = _convert(conv, raw, at.key(key))
        if result is not _BAD:
            fields[key] = result
    return fields


def _unknown_key(key: object, table: Mapping[str, Converter]) -> str:
    close = difflib.get_close_matches(str(key), list(table), n=1)
    return f"unknown key (did you mean {close[0]!r}?)" if close else "unknown key"


# -- cross-field checks ------------------------------------------------------------------------


def _check_rule(rule: SessionRule, at: _At) -> None:
    if not at.clean("path", "header", "query", "json"):
        return
    sources = [k for k in ("header", "query", "json") if getattr(rule, k) is not None]
    if len(sources) > 1:
        at.add(f"give only one of header, query, json (got {', '.join(sources)})")
    elif not sources and rule.path is None:
        at.add("needs a source: header, query, json, or a path with a (?P<session>...) group")
    elif not sources and rule.path is not None and "session" not in rule.path.groupindex:
        at.key("path").add("must contain a named group (?P<session>...) when it is the only source")


def _check_unique_names(instances: tuple[InstanceConfig, ...], at: _At) -> None:
    seen: set[str] = set()
    for index, instance in enumerate(instances):
        if not instance.name:
            continue  # missing or invalid: already reported
        if instance.name in seen:
            at.index(index).key("name").add(f"duplicate instance name {instance.name!r}")
        seen.add(instance.name)


def _check_retries(retries: RetryConfig, at: _At) -> None:
    if at.clean("delay", "max_delay") and retries.delay > retries.max_delay:
        at.key("delay").add(f"must be <= max_delay ({retries.delay:g}s > {retries.max_delay:g}s)")


def _check_passive(passive: PassiveConfig, at: _At) -> None:
    if at.clean("ejection_time", "max_ejection_time") and (
        passive.ejection_time > passive.max_ejection_time
    ):
        at.key("ejection_time").add("must be <= max_ejection_time")


_ANY_HOST: Final = frozenset({"", "0.0.0.0", "::", "[::]", "*"})


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _check_config(config: Config, at: _At) -> None:
    workers = config.listen.workers
    if at.clean("listen.workers", "store.url") and workers > 1 and config.store.url is None:
        at.key("listen.workers").add(
            f"{workers} workers: more than 1 needs store.url: "
            "the in-memory store cannot be shared between processes"
        )
    listen, admin = config.listen, config.admin
    overlap = listen.host == admin.host or bool({listen.host, admin.host} & _ANY_HOST)
    clean = at.clean("listen.host", "listen.port", "admin.host", "admin.port")
    if at.clean("admin.host", "admin.token") and config.admin.token is None and not _loopback(admin.host):
        at.key("admin.token").add(
            f"required when the admin port listens beyond loopback (admin.host {admin.host!r}): "
            "without a token anyone who reaches it could read the fleet"
        )
    if clean and overlap and listen.port == admin.port:
        at.key("admin.port").add(
            f"admin and listen can't share the same address "
            f"({_address(admin.host, admin.port)} and {_address(listen.host, listen.port)})"
        )


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


# -- the schema -------------------------------------------------------------------------------

_DEFAULT_FAILOVER: Final = FailoverConfig()
_NAME: Final = r"[A-Za-z0-9_.-]{1,64}"
_POSITIVE: Final = _duration()
_THRESHOLD: Final = _integer(1)


def _call(base: InstanceCall, *, session: bool) -> Converter:
    """A request to an instance; keys left out keep ``base``'s values."""
    table = {"method": _method, "path": _url_path(session=session)}
    return _section(partial(dataclasses.replace, base), table)


_RULE = _section(
    SessionRule,
    {
        "path": _regex,
        "header": _header,
        "query": _text(),
        "json": _text(
            pattern=r"[^.]+(\.[^.]+)*", what="must be a dotted field path like data.session"
        ),
        "methods": _list(_method, make=frozenset, non_empty=True),
    },
    check=_check_rule,
)

_INSTANCE = _section(
    InstanceConfig,
    {
        "name": _text(pattern=_NAME, what=f"must match ^{_NAME}$"),
        "url": _instance_url,
        "weight": _number(0, above=True),
        "max_sessions": _integer(1, nullable=True),
        "api_key": _secret,
    },
    required={"name": "", "url": ""},
)

_TARGET = _section(
    WebhookTarget,
    {
        "url": _http_url,
        "events": _list(_text(), make=frozenset, non_empty=True),
        "hmac_key": _secret,
    },
    required={"url": ""},
)

_STATUSES = _list(_status, make=frozenset)

_TABLE: Final[Mapping[str, Converter]] = {
    "listen": _section(
        ListenConfig,
        {
            "host": _text(),
            "port": _integer(1, 65535),
            "workers": _integer(1),
            "shutdown_timeout": _POSITIVE,
            "keepalive_timeout": _POSITIVE,
            "api_keys": _list(_secret, skip_empty=True),
            "max_connections": _integer(1),
        },
    ),
    "admin": _section(AdminConfig, {"host": _text(), "port": _integer(1, 65535), "token": _secret}),
    "store": _section(StoreConfig, {"url": _store_url, "prefix": _plain_str}),
    "profile": _choice("waha", "evolution", "generic"),
    "placement": _section(PlacementConfig, {"balance_factor": _number(1.0)}),
    "instances": _list(_INSTANCE, non_empty=True, check=_check_unique_names),
    "sessions": _section(
        SessionsConfig,
        {
            "id_pattern": _regex,
            "rules": _list(_RULE),
            "unscoped": _choice("any", "reject"),
            "fan_out": _list(_fan_out),
            "json_body_limit": _size(zero_ok=True),
        },
    ),
    "health": _section(
        HealthConfig,
        {
            "path": _url_path(),
            "interval": _POSITIVE,
            "timeout": _POSITIVE,
            "unhealthy_threshold": _THRESHOLD,
            "healthy_threshold": _THRESHOLD,
        },
    ),
    "passive": _section(
        PassiveConfig,
        {
            "consecutive_failures": _THRESHOLD,
            "statuses": _STATUSES,
            "ejection_time": _POSITIVE,
            "max_ejection_time": _POSITIVE,
            "max_ejection_percent": _integer(0, 100),
        },
        check=_check_passive,
    ),
    "failover": _section(
        FailoverConfig,
        {
            "grace": _duration(zero_ok=True),  # 0: fail over as soon as it is down
            "hold_timeout": _POSITIVE,
            "restore_concurrency": _integer(1),
            "restore": _call(_DEFAULT_FAILOVER.restore, session=True),
            "stop": _call(_DEFAULT_FAILOVER.stop, session=True),
            "status": _section(
                partial(dataclasses.replace, StatusCall()),
                {
                    "method": _method,
                    "path": _url_path(session=True),
                    "ready": _list(_text(), make=frozenset, non_empty=True),
                },
            ),
            "list": _call(_DEFAULT_FAILOVER.list, session=False),
            "max_held_requests": _integer(1),
            "restore_timeout": _POSITIVE,
            "restore_attempts": _integer(1),
            "leader_ttl": _POSITIVE,
        },
    ),
    "limits": _section(
        LimitsConfig,
        {
            "max_body": _size(),
            "upstream_connect_timeout": _POSITIVE,
            "upstream_timeout": _POSITIVE,
            "client_header_timeout": _POSITIVE,
            "client_body_timeout": _POSITIVE,
        },
    ),
    "webhooks": _section(
        WebhooksConfig,
        {
            "path": _url_path(),
            "inbound_hmac_key": _secret,
            "targets": _list(_TARGET),
            "retries": _section(
                RetryConfig,
                {
                    "policy": _choice("constant", "linear", "exponential"),
                    "delay": _POSITIVE,
                    "max_delay": _POSITIVE,
                    "attempts": _integer(1),
                    "jitter": _number(0.0, 1.0),
                },
                check=_check_retries,
            ),
            "no_retry_statuses": _STATUSES,
            "ordering": _choice("per_session", "none"),
            "max_body": _size(),
        },
    ),
    "alerts": _section(
        AlertsConfig,
        {
            # Unset ${SLACK_URL} entries are dropped, so one file serves with and without.
            "webhooks": _list(_secret_url, skip_empty=True),
            "webhook_backlog_threshold": _integer(1),
        },
    ),
    "metrics": _section(MetricsConfig, {"enabled": _boolean}),
    "log": _section(
        LogConfig,
        {
            "format": _choice("text", "json"),
            "level": _choice("DEBUG", "INFO", "WARNING", "ERROR", upper=True),
        },
    ),
}

_ROOT: Final = _section(Config, _TABLE, required={"instances": ()}, check=_check_config)


# -- YAML ---------------------------------------------------------------------------------------


class _YamlLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (PyYAML silently keeps the last one)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[tuple[str, str]] = set()
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag.endswith(":merge"):
                continue
            ident = (key_node.tag, key_node.value)
            if ident in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key_node.value!r}", key_node.start_mark
                )
            seen.add(ident)
        return super().construct_mapping(node, deep=deep)


def _load_yaml(text: str, source: str | None) -> Any:
    try:
        return yaml.load(text, Loader=_YamlLoader)  # safe: a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "somewhere"
        # No snippet of the document: the offending line may hold a secret.
        raise ConfigError([f"{source or 'yaml'}: {where}: {exc.problem or exc.context}"]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"{source or 'yaml'}: {exc}"]) from None


# -- public API ---------------------------------------------------------------------------------


def parse_config(
    text: str, *, env: Mapping[str, str] | None = None, source: str | None = None
) -> Config:
    """Parse and validate YAML text; raise ``ConfigError`` listing every problem."""
    document = _load_yaml(text, source)
    problems: list[str] = []
    root = _At("", problems)
    expanded = _expand_tree(
        {} if document is None else document, os.environ if env is None else env, root
    )
    config = _convert(_ROOT, expanded, root)
    if problems or not isinstance(config, Config):
        raise ConfigError(problems)
    return dataclasses.replace(config, source=source)


def load_config(path: str | os.PathLike[str], *, env: Mapping[str, str] | None = None) -> Config:
    """Read and validate a config file; unreadable files raise ``ConfigError`` too."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError([f"{os.fspath(path)}: cannot read: {reason}"]) from None
    return parse_config(text, env=env, source=os.fspath(path))


def check_config(path: str) -> int:
    """``wa-router check-config``: 0 with a summary on stdout, or 2 with every problem on stderr."""
    try:
        config = load_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 2
    print(_summary(config))
    return 0


def _summary(config: Config) -> str:
    count = len(config.instances)
    store = "redis" if config.store.url else "memory"
    return (
        f"config OK: {count} instance{'s' * (count != 1)}, profile {config.profile}, "
        f"store {store}, listen {config.listen.host}:{config.listen.port}, "
        f"admin {config.admin.host}:{config.admin.port}"
    )


def redacted(config: Config) -> dict[str, Any]:
    """The config as a JSON-able dict in the YAML's shape, every secret shown as ``***``."""
    result = _jsonable(config)
    assert isinstance(result, dict)
    result["sessions"]["fan_out"] = [f"{m} {p}" for m, p in config.sessions.fan_out]
    return result


def _jsonable(value: Any) -> Any:
    if isinstance(value, Secret):
        return "***"
    if isinstance(value, re.Pattern):
        return value.pattern
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, frozenset):
        return sorted(_jsonable(v) for v in value)
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    return value
