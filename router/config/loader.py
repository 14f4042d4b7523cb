"""YAML -> ``Config``: env expansion, then a table-driven walk that collects every problem.

Each section is a table ``key -> converter``. A converter turns one raw YAML value into its
model value or raises ``_Invalid``; nested converters record their own problems under their
own path. Problems read ``path.to.key: message`` and never echo a secret.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import sys
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any, Final

import yaml

from router.config import fields as f
from router.config.control import check_agent_stop, failover_section
from router.config.model import (
    PROFILE_DEFAULTS,
    AccessLogConfig,
    AdminConfig,
    AgentConfig,
    AlertsConfig,
    Config,
    DelayRange,
    InstanceConfig,
    LimitsConfig,
    ListenConfig,
    LogConfig,
    MetricsConfig,
    OutboxConfig,
    PassiveConfig,
    PlacementConfig,
    Profile,
    RetryConfig,
    Secret,
    SendLimits,
    SessionRule,
    StoreConfig,
    WebhooksConfig,
    WebhookTarget,
)
from router.errors import ConfigError

__all__ = ["check_config", "load_agent_config", "load_config", "parse_config", "redacted"]



# -- cross-field checks ------------------------------------------------------------------------


def _check_rule(rule: SessionRule, at: f.At) -> None:
    if not at.clean("path", "header", "query", "json"):
        return
    sources = [k for k in ("header", "query", "json") if getattr(rule, k) is not None]
    if len(sources) > 1:
        at.add(f"give only one of header, query, json (got {', '.join(sources)})")
    elif not sources and rule.path is None:
        at.add("needs a source: header, query, json, or a path with a (?P<session>...) group")
    elif not sources and rule.path is not None and "session" not in rule.path.groupindex:
        at.key("path").add("must contain a named group (?P<session>...) when it is the only source")


def _check_unique_names(instances: tuple[InstanceConfig, ...], at: f.At) -> None:
    seen: set[str] = set()
    for index, instance in enumerate(instances):
        if not instance.name:
            continue  # missing or invalid: already reported
        if instance.name in seen:
            at.index(index).key("name").add(f"duplicate instance name {instance.name!r}")
        seen.add(instance.name)


def _check_delay(delay: DelayRange, at: f.At) -> None:
    if at.clean("min", "max") and delay.min > delay.max:
        at.key("min").add(f"must be <= max ({delay.min:g}s > {delay.max:g}s)")


def _check_retries(retries: RetryConfig, at: f.At) -> None:
    if at.clean("delay", "max_delay") and retries.delay > retries.max_delay:
        at.key("delay").add(f"must be <= max_delay ({retries.delay:g}s > {retries.max_delay:g}s)")


def _check_passive(passive: PassiveConfig, at: f.At) -> None:
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


def _check_config(config: Config, at: f.At) -> None:
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


def _check_agent(agent: AgentConfig, at: f.At) -> None:
    if at.clean("renew", "fence_after") and agent.fence_after <= agent.renew:
        at.key("fence_after").add(
            f"must be longer than renew ({agent.fence_after:g}s <= {agent.renew:g}s): "
            "the agent would fence itself between two renewals"
        )


def _check_grace(config: Config, at: f.At) -> None:
    """With an agent, sessions move only once it has fenced itself: a grace shorter than
    that only holds requests longer (the leader waits for the agent anyway)."""
    from router.agent.gate import margin

    agent = config.agent
    if agent is None or not at.clean("failover.grace", "agent.fence_after", "agent.renew"):
        return
    need = agent.fence_after + margin(agent.renew)
    if config.failover.grace < need:
        at.key("failover.grace").add(
            f"must be >= agent.fence_after plus the fencing margin ({need:g}s): "
            f"got {config.failover.grace:g}s"
        )


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


# -- the schema -------------------------------------------------------------------------------

_DEFAULT_OUTBOX: Final = OutboxConfig()
_NAME: Final = r"[A-Za-z0-9_.-]{1,64}"
_POSITIVE: Final = f.duration()
_THRESHOLD: Final = f.integer(1)


_RULE = f.section(
    SessionRule,
    {
        "path": f.regex,
        "header": f.header,
        "query": f.text(),
        "json": f.text(
            pattern=r"[^.]+(\.[^.]+)*", what="must be a dotted field path like data.session"
        ),
        "methods": f.list_of(f.method, make=frozenset, non_empty=True),
    },
    check=_check_rule,
)

_INSTANCE = f.section(
    InstanceConfig,
    {
        "name": f.text(pattern=_NAME, what=f"must match ^{_NAME}$"),
        "url": f.instance_url,
        "weight": f.number(0, above=True),
        "max_sessions": f.integer(1, nullable=True),
        "api_key": f.secret,
    },
    required={"name": "", "url": ""},
)

_TARGET = f.section(
    WebhookTarget,
    {
        "url": f.http_url,
        "events": f.list_of(f.text(), make=frozenset, non_empty=True),
        "hmac_key": f.secret,
    },
    required={"url": ""},
)

_STATUSES = f.list_of(f.status, make=frozenset)

_RETRIES = {
    "policy": f.choice("constant", "linear", "exponential"),
    "delay": _POSITIVE,
    "max_delay": _POSITIVE,
    "attempts": f.integer(1),
    "jitter": f.number(0.0, 1.0),
}

_AGENT: Final = f.section(
    AgentConfig,
    {
        "instance": f.text(pattern=_NAME, what=f"must match ^{_NAME}$"),
        "url": f.instance_url,
        "api_key": f.secret,
        "renew": _POSITIVE,
        "fence_after": _POSITIVE,
        "stop_command": f.list_of(f.text(), non_empty=True),
    },
    required={"instance": "", "url": ""},
    check=_check_agent,
)

_TABLE: Final[Mapping[str, f.Converter]] = {
    "listen": f.section(
        ListenConfig,
        {
            "host": f.text(),
            "port": f.integer(1, 65535),
            "workers": f.integer(1),
            "shutdown_timeout": _POSITIVE,
            "keepalive_timeout": _POSITIVE,
            "api_keys": f.list_of(f.secret, skip_empty=True),
            "max_connections": f.integer(1),
            "idempotency_keys": f.boolean,
        },
    ),
    "admin": f.section(AdminConfig, {"host": f.text(), "port": f.integer(1, 65535), "token": f.secret}),
    "store": f.section(StoreConfig, {"url": f.store_url, "prefix": f.plain_str}),
    "profile": f.choice("waha", "evolution", "generic"),
    "placement": f.section(PlacementConfig, {"balance_factor": f.number(1.0)}),
    "instances": f.list_of(_INSTANCE, non_empty=True, check=_check_unique_names),
    "passive": f.section(
        PassiveConfig,
        {
            "consecutive_failures": _THRESHOLD,
            "statuses": _STATUSES,
            "ejection_time": _POSITIVE,
            "max_ejection_time": _POSITIVE,
            "max_ejection_percent": f.integer(0, 100),
        },
        check=_check_passive,
    ),
    "limits": f.section(
        LimitsConfig,
        {
            "max_body": f.size(),
            "upstream_connect_timeout": _POSITIVE,
            "upstream_timeout": _POSITIVE,
            "client_header_timeout": _POSITIVE,
            "client_body_timeout": _POSITIVE,
        },
    ),
    "webhooks": f.section(
        WebhooksConfig,
        {
            "path": f.url_path(),
            "inbound_hmac_key": f.secret,
            "targets": f.list_of(_TARGET),
            "retries": f.section(RetryConfig, _RETRIES, check=_check_retries),
            "no_retry_statuses": _STATUSES,
            "ordering": f.choice("per_session", "none"),
            "max_body": f.size(),
        },
    ),
    "alerts": f.section(
        AlertsConfig,
        {
            # Unset ${SLACK_URL} entries are dropped, so one file serves with and without.
            "webhooks": f.list_of(f.secret_url, skip_empty=True),
            "webhook_backlog_threshold": f.integer(1),
        },
    ),
    "outbox": f.section(
        OutboxConfig,
        {
            "enabled": f.boolean,
            "delay": f.section(DelayRange, {"min": f.duration(zero_ok=True),
                                            "max": f.duration(zero_ok=True)}, check=_check_delay),
            "limits": f.section(SendLimits, {"per_minute": f.integer(0), "per_hour": f.integer(0),
                                             "per_day": f.integer(0)}),
            "typing": f.boolean,
            "ttl": _POSITIVE,
            "max_wait": _POSITIVE,
            "retries": f.section(partial(dataclasses.replace, _DEFAULT_OUTBOX.retries), _RETRIES,
                                 check=_check_retries),
            "keep": _POSITIVE,
            "max_batch": f.integer(1),
            "idempotency_ttl": _POSITIVE,
            "ack_timeout": _POSITIVE,
            "reconcile_window": _POSITIVE,
            "pause_after_failures": f.integer(1),
            "stall_alert": _POSITIVE,
        },
    ),
    "metrics": f.section(MetricsConfig, {"enabled": f.boolean}),
    "agent": _AGENT,
    "log": f.section(
        LogConfig,
        {
            "format": f.choice("text", "json"),
            "level": f.choice("DEBUG", "INFO", "WARNING", "ERROR", upper=True),
            "access": f.section(AccessLogConfig, {
                "enabled": f.boolean, "format": f.choice("json", "combined"), "path": f.text(),
                "sample": f.number(0.0, 1.0)}),
        },
    ),
}



def _check_root(config: Config, at: f.At) -> None:
    _check_config(config, at)
    _check_grace(config, at)
    check_agent_stop(config, at)


def _check_agent_root(config: Config, at: f.At) -> None:
    _check_grace(config, at)
    check_agent_stop(config, at)


_SESSIONS_TABLE: Final[Mapping[str, f.Converter]] = {
    "id_pattern": f.regex,
    "rules": f.list_of(_RULE),
    "unscoped": f.choice("any", "reject"),
    "fan_out": f.list_of(f.fan_out),
    "json_body_limit": f.size(zero_ok=True),
}
_HEALTH_TABLE: Final[Mapping[str, f.Converter]] = {
    "path": f.url_path(),
    "interval": _POSITIVE,
    "timeout": _POSITIVE,
    "unhealthy_threshold": _THRESHOLD,
    "healthy_threshold": _THRESHOLD,
}


def _roots(profile: Profile) -> tuple[f.Converter, f.Converter]:
    """The router's and the agent's root converters, with ``profile``'s defaults for the
    sections that depend on it (a section's keys replace only what they name)."""
    failover, health, sessions = PROFILE_DEFAULTS[profile]
    table = {
        **_TABLE,
        "failover": failover_section(failover),
        "health": f.section(partial(dataclasses.replace, health), _HEALTH_TABLE),
        "sessions": f.section(partial(dataclasses.replace, sessions), _SESSIONS_TABLE),
    }
    make = partial(Config, failover=failover, health=health, sessions=sessions)
    return (f.section(make, table, required={"instances": ()}, check=_check_root),
            # ``wa-router agent -c FILE``: the agent section and the store; instances are
            # optional, so the agent may read its own small file or the router's.
            f.section(partial(make, instances=()), table, required={"agent": None},
                      check=_check_agent_root))


_ROOTS: Final[Mapping[str, tuple[f.Converter, f.Converter]]] = {
    profile: _roots(profile) for profile in PROFILE_DEFAULTS}


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
    text: str, *, env: Mapping[str, str] | None = None, source: str | None = None,
    agent: bool = False,
) -> Config:
    """Parse and validate YAML text; raise ``ConfigError`` listing every problem.
    ``agent``: an agent's file (``agent`` required, ``instances`` optional)."""
    document = _load_yaml(text, source)
    problems: list[str] = []
    root = f.At("", problems)
    expanded = f.expand_tree(
        {} if document is None else document, os.environ if env is None else env, root
    )
    # The profile picks the defaults of the sections that depend on it; a bad one is
    # reported by its own converter (and the rest is read with waha's defaults).
    profile = expanded.get("profile") if isinstance(expanded, dict) else None
    roots = _ROOTS.get(profile, _ROOTS["waha"]) if isinstance(profile, str) else _ROOTS["waha"]
    config = f.convert(roots[1] if agent else roots[0], expanded, root)
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


def load_agent_config(path: str | os.PathLike[str], *,
                      env: Mapping[str, str] | None = None) -> Config:
    """Read an agent's config file (see ``parse_config(agent=True)``)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError([f"{os.fspath(path)}: cannot read: {reason}"]) from None
    return parse_config(text, env=env, source=os.fspath(path), agent=True)


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
