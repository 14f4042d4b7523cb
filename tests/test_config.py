"""The config loader: defaults, env expansion, validation (every problem at once), secrets."""

from __future__ import annotations

import dataclasses
import json
import re
import textwrap
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from router.config import (
    PROFILE_DEFAULTS,
    Config,
    ConfigError,
    InstanceCall,
    InstanceConfig,
    ListCall,
    Secret,
    SessionRule,
    StatusCall,
    check_config,
    load_config,
    parse_config,
    redacted,
)

CONFIG_DIR = Path(__file__).resolve().parent.parent / "config"
ONE_INSTANCE = "instances: [{name: node-1, url: 'http://127.0.0.1:3001'}]\n"


def parse(text: str, **env: str) -> Config:
    return parse_config(textwrap.dedent(text), env=env)


def problems(text: str, **env: str) -> list[str]:
    """The problems of a config that must not load."""
    with pytest.raises(ConfigError) as info:
        parse(text, **env)
    assert info.value.problems, "a ConfigError always lists its problems"
    return info.value.problems


# -- defaults and the full shape --------------------------------------------------------------


def test_only_instances_is_required_and_everything_else_defaults() -> None:
    config = parse(ONE_INSTANCE)
    assert config == Config(instances=(InstanceConfig("node-1", "http://127.0.0.1:3001"),))
    assert config.source is None


@pytest.mark.parametrize("text", ["", "# nothing\n", "listen: {port: 8080}\n"])
def test_instances_is_required(text: str) -> None:
    assert problems(text) == ["instances: required"]


def test_instances_must_not_be_empty() -> None:
    assert problems("instances: []") == ["instances: must not be empty"]


def test_empty_sections_keep_defaults() -> None:
    config = parse(ONE_INSTANCE + "listen:\nhealth:\nwebhooks: {targets: null}\n")
    assert config.listen == Config(instances=()).listen
    assert config.webhooks.targets == ()


FULL = """
listen: {host: 127.0.0.1, port: 9000, workers: 4, shutdown_timeout: 3s, keepalive_timeout: 1m}
admin: {host: 10.0.0.1, port: 9001, token: "${TOKEN}"}
store: {url: "${REDIS}", prefix: "wr:"}
profile: evolution
placement: {balance_factor: 1.5}
instances:
  - {name: node-1, url: "http://10.0.0.11:3000/", weight: 2.5, max_sessions: 50, api_key: "${KEY1}"}
  - {name: node_2.b, url: "https://node2.internal", weight: 1, max_sessions: null}
sessions:
  id_pattern: '^[a-z]+$'
  rules:
    - {path: '^/v1/accounts/(?P<session>[^/]+)/'}
    - {header: X-Session-Id}
    - {query: session}
    - {methods: [post, Put], path: '^/v1/messages$', json: data.account}
  unscoped: reject
  fan_out: ['GET /api/sessions', 'post  /api/bulk']
  json_body_limit: 512KiB
health: {path: /health, interval: 500ms, timeout: 250ms, unhealthy_threshold: 3, healthy_threshold: 1}
passive:
  consecutive_failures: 5
  statuses: [500, 502]
  ejection_time: 30s
  max_ejection_time: 10m
  max_ejection_percent: 0
failover:
  grace: 0
  hold_timeout: 1m
  restore_concurrency: 2
  restore: {path: '/s/{session}/up'}
  stop: {method: put, path: '/s/{session}/down'}
  status: {path: '/s/{session}', field: data.state, ready: [WORKING, CONNECTED], failed: [BANNED]}
  list: {method: GET, path: /s, items: data.sessions, name: id, state: info.state, stopped: [DOWN], confirm: false}
limits: {max_body: 10MB, upstream_connect_timeout: 1s, upstream_timeout: 2m, client_header_timeout: 5s}
webhooks:
  path: /hooks
  inbound_hmac_key: "${IN_KEY}"
  targets:
    - {url: "https://laravel.example/hook", events: [message, session.status], hmac_key: "${OUT_KEY}"}
    - {url: "http://other.example/hook"}
  retries: {policy: linear, delay: 1s, max_delay: 1s, attempts: 1, jitter: 0}
  no_retry_statuses: [400]
  ordering: none
  max_body: 1MiB
alerts: {webhooks: ["${SLACK}"], webhook_backlog_threshold: 10}
log: {format: json, level: debug}
"""

FULL_ENV = {
    "TOKEN": "tok-123",
    "REDIS": "redis://:pw@redis:6379/0",
    "KEY1": "key-1",
    "IN_KEY": "in-key",
    "OUT_KEY": "out-key",
    "SLACK": "https://hooks.slack.com/services/T/B/X",
}


def test_every_key_parses_into_the_model() -> None:
    c = parse(FULL, **FULL_ENV)
    assert (c.listen.host, c.listen.port, c.listen.workers) == ("127.0.0.1", 9000, 4)
    assert (c.listen.shutdown_timeout, c.listen.keepalive_timeout) == (3.0, 60.0)
    assert (c.admin.host, c.admin.port, c.admin.token) == ("10.0.0.1", 9001, Secret("tok-123"))
    assert c.store.url == Secret("redis://:pw@redis:6379/0") and c.store.prefix == "wr:"
    assert c.profile == "evolution" and c.placement.balance_factor == 1.5
    assert c.instances == (
        InstanceConfig("node-1", "http://10.0.0.11:3000", 2.5, 50, Secret("key-1")),
        InstanceConfig("node_2.b", "https://node2.internal", 1.0, None, None),
    )
    s = c.sessions
    assert s.id_pattern.pattern == "^[a-z]+$" and s.unscoped == "reject"
    assert s.fan_out == (("GET", "/api/sessions"), ("POST", "/api/bulk"))
    assert s.json_body_limit == 512 * 1024
    assert s.rules[0] == SessionRule(path=re.compile(r"^/v1/accounts/(?P<session>[^/]+)/"))
    assert s.rules[1] == SessionRule(header="x-session-id")
    assert s.rules[2] == SessionRule(query="session")
    assert s.rules[3] == SessionRule(
        path=re.compile("^/v1/messages$"), json="data.account", methods=frozenset({"POST", "PUT"})
    )
    h = c.health
    assert (h.path, h.interval, h.timeout, h.unhealthy_threshold, h.healthy_threshold) == (
        "/health",
        0.5,
        0.25,
        3,
        1,
    )
    p = c.passive
    assert (p.consecutive_failures, p.statuses) == (5, frozenset({500, 502}))
    assert (p.ejection_time, p.max_ejection_time, p.max_ejection_percent) == (30.0, 600.0, 0)
    f = c.failover
    assert (f.grace, f.hold_timeout, f.restore_concurrency) == (0.0, 60.0, 2)
    # method kept from the profile's default (evolution: GET /instance/connect/{session})
    assert f.restore == InstanceCall("GET", "/s/{session}/up")
    assert f.stop == InstanceCall("PUT", "/s/{session}/down")
    assert f.status == StatusCall("GET", "/s/{session}", "data.state",
                                  frozenset({"WORKING", "CONNECTED"}), frozenset({"BANNED"}))
    assert f.list == ListCall("GET", "/s", "data.sessions", "id", "info.state", frozenset({"DOWN"}),
                              confirm=False)
    lim = c.limits
    assert (lim.max_body, lim.upstream_connect_timeout, lim.upstream_timeout) == (10**7, 1.0, 120.0)
    assert lim.client_header_timeout == 5.0
    w = c.webhooks
    assert (w.path, w.inbound_hmac_key, w.ordering, w.max_body) == (
        "/hooks",
        Secret("in-key"),
        "none",
        1024**2,
    )
    assert w.targets[0].events == frozenset({"message", "session.status"})
    assert w.targets[0].hmac_key == Secret("out-key")
    assert w.targets[1].events == frozenset({"*"}) and w.targets[1].hmac_key is None
    r = w.retries
    assert (r.policy, r.delay, r.max_delay, r.attempts, r.jitter) == ("linear", 1.0, 1.0, 1, 0.0)
    assert w.no_retry_statuses == frozenset({400})
    assert c.alerts.webhooks == (Secret(FULL_ENV["SLACK"]),)
    assert c.alerts.webhook_backlog_threshold == 10
    assert (c.log.format, c.log.level) == ("json", "DEBUG")


# The YAML block of the contract, verbatim.
CONTRACT_EXAMPLE = r"""
listen:        {host: 0.0.0.0, port: 8080, workers: 1}   # workers>1 needs store.url
admin:         {host: 127.0.0.1, port: 8081, token: "${ROUTER_ADMIN_TOKEN}"}
store:         {url: "redis://127.0.0.1:6379/0", prefix: "wa-router:"}  # omit url: in-memory
profile: waha                      # waha | evolution | generic: built-in session rules
placement:
  balance_factor: 1.25             # eps = 0.25: no instance above ceil(1.25 x weighted average)
instances:
  - {name: node-1, url: "http://10.0.0.11:3000", weight: 1, max_sessions: 50, api_key: "${NODE1_KEY}"}
sessions:
  id_pattern: '^[A-Za-z0-9_.@:-]{1,128}$'   # anything else: 400
  rules:                  # your own, tried in order before the profile's built-in rules
    - {path: '^/v1/accounts/(?P<session>[^/]+)/'}        # a regex with a `session` group
    - {header: X-Session-Id}
    - {query: session}
    - {methods: [POST], path: '^/v1/messages$', json: account}   # a JSON body field
  unscoped: any          # any | reject : requests with no session id
  fan_out: ['GET /api/sessions']   # answered by merging all healthy instances' JSON lists
health:
  path: /ping
  interval: 1s
  timeout: 500ms
  unhealthy_threshold: 2
  healthy_threshold: 2
passive:
  consecutive_failures: 3          # connect error, timeout, or a status in `statuses`
  statuses: [502, 503, 504]
  ejection_time: 10s               # grows with repeated ejections, capped at 5m
  max_ejection_percent: 50
failover:
  grace: 5s                        # an instance back within this keeps its sessions
  hold_timeout: 15s
  restore_concurrency: 4          # per target instance (starting sessions loads its CPU)
  restore: {method: POST, path: '/api/sessions/{session}/start'}
  stop:    {method: POST, path: '/api/sessions/{session}/stop'}
  status:  {method: GET,  path: '/api/sessions/{session}', ready: [WORKING]}
  list:    {method: GET,  path: '/api/sessions?all=true'}
limits:
  max_body: 64MiB
  upstream_connect_timeout: 2s
  upstream_timeout: 60s
  client_header_timeout: 10s
webhooks:
  path: /webhooks                  # instances post here (on the proxy port)
  inbound_hmac_key: "${INSTANCE_HMAC_KEY}"     # optional: verify X-Webhook-Hmac (sha512)
  targets:
    - url: "https://laravel.example/api/whatsapp/webhook"
      events: ['*']
      hmac_key: "${LARAVEL_HMAC_KEY}"          # optional: sign what is delivered
  retries: {policy: exponential, delay: 2s, max_delay: 5m, attempts: 15, jitter: 0.2}
  no_retry_statuses: [400, 401, 403, 404, 422]
  ordering: per_session            # per_session | none
alerts:
  webhooks: ["https://hooks.slack.com/services/..."]   # JSON {"text": ..., "event": ...}
  webhook_backlog_threshold: 1000
"""


def test_the_contract_example_loads_and_matches_the_defaults() -> None:
    config = parse(CONTRACT_EXAMPLE)
    defaults = Config(instances=())
    assert config.admin.token is None and config.instances[0].api_key is None  # unset env
    assert config.store.url == Secret("redis://127.0.0.1:6379/0")
    assert len(config.sessions.rules) == 4
    for section in ("listen", "placement", "health", "passive", "failover", "limits", "log"):
        assert getattr(config, section) == getattr(defaults, section), section
    assert config.webhooks.retries == defaults.webhooks.retries


@pytest.mark.parametrize("name", ["example.yaml", "demo.yaml", "evolution.example.yaml"])
def test_shipped_configs_load_without_environment(name: str) -> None:
    config = load_config(CONFIG_DIR / name, env={})
    assert config.source == str(CONFIG_DIR / name)
    assert config.instances


def test_example_documents_every_key() -> None:
    import yaml

    document = yaml.safe_load((CONFIG_DIR / "example.yaml").read_text())
    config = load_config(CONFIG_DIR / "example.yaml", env={})
    for section in dataclasses.fields(Config):
        if section.name in ("source", "instances", "profile", "agent"):  # agent: agent.example.yaml
            continue
        value = getattr(config, section.name)
        written = set(document[section.name])
        assert {f.name for f in dataclasses.fields(value)} == written, section.name
    assert {f.name for f in dataclasses.fields(InstanceConfig)} == set(document["instances"][0])
    defaults = Config(instances=config.instances)
    assert dataclasses.replace(config, source=None) == defaults, "example.yaml shows the defaults"


def test_demo_config() -> None:
    config = load_config(CONFIG_DIR / "demo.yaml", env={})
    assert [(i.name, i.url) for i in config.instances] == [
        (f"node-{n}", f"http://127.0.0.1:300{n}") for n in (1, 2, 3)
    ]
    assert (config.listen.host, config.listen.port) == ("127.0.0.1", 8080)
    assert (config.admin.host, config.admin.port) == ("127.0.0.1", 8081)
    assert config.profile == "waha" and config.store.url is None
    assert config.health.interval == 0.5 and config.failover.grace == 3.0


# -- environment ---------------------------------------------------------------------------------


def test_env_expansion_with_and_without_defaults() -> None:
    config = parse(
        """
        listen: {host: "${HOST}", port: 8080}
        store: {prefix: "${PREFIX:-wr}:${ENV_NAME:-dev}:"}
        log: {level: "${LEVEL:-info}"}
        """
        + ONE_INSTANCE,
        HOST="10.1.2.3",
        ENV_NAME="",  # set but empty: `:-` uses the default, as in the shell
    )
    assert config.listen.host == "10.1.2.3"
    assert type(config.listen.host) is str
    assert config.store.prefix == "wr:dev:"
    assert config.log.level == "INFO"


def test_unset_variable_without_default_is_empty() -> None:
    config = parse("store: {prefix: 'a${NOPE}b'}\n" + ONE_INSTANCE)
    assert config.store.prefix == "ab"


def test_load_config_reads_os_environ(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("admin: {token: '${WR_TEST_TOKEN}'}\n" + ONE_INSTANCE)
    monkeypatch.setenv("WR_TEST_TOKEN", "from-env")
    assert load_config(path).admin.token == Secret("from-env")


@pytest.mark.parametrize(
    "section",
    [
        "admin: {token: '${T}'}",
        "store: {url: '${T}'}",
        "webhooks: {inbound_hmac_key: '${T}'}",
        "webhooks: {targets: [{url: 'http://x', hmac_key: '${T}'}]}",
    ],
)
def test_empty_optional_secret_means_not_set(section: str) -> None:
    config = parse(section + "\n" + ONE_INSTANCE)
    assert config.admin.token is None and config.store.url is None
    assert config.webhooks.inbound_hmac_key is None
    assert all(t.hmac_key is None for t in config.webhooks.targets)


def test_empty_api_key_and_alert_url_mean_not_set() -> None:
    config = parse(
        """
        instances: [{name: a, url: 'http://x', api_key: '${K}'}]
        alerts: {webhooks: ['${SLACK}', 'https://hooks.example/1']}
        """
    )
    assert config.instances[0].api_key is None
    assert config.alerts.webhooks == (Secret("https://hooks.example/1"),)


@pytest.mark.parametrize(
    "value", ["x\ninstances: []", "{a: 1}", "[1, 2]", "'quoted'", "*anchor", "!!python/name:os"]
)
def test_env_values_cannot_inject_yaml(value: str) -> None:
    config = parse("store: {prefix: '${P}'}\n" + ONE_INSTANCE, P=value)
    assert config.store.prefix == value
    assert len(config.instances) == 1


def test_numbers_may_come_from_the_environment() -> None:
    config = parse(
        """
        listen:
          port: ${PORT}
          workers: ${WORKERS:-1}
        placement: {balance_factor: "${BF}"}
        instances: [{name: a, url: 'http://x', weight: '${W}', max_sessions: '${MAX}'}]
        """,
        PORT="9000",
        BF="1.5",
        W="2",
    )
    assert (config.listen.port, config.listen.workers) == (9000, 1)
    assert config.placement.balance_factor == 1.5
    assert (config.instances[0].weight, config.instances[0].max_sessions) == (2.0, None)


def test_env_number_that_is_not_a_number() -> None:
    text = "listen:\n  port: ${PORT}\nplacement: {balance_factor: '${BF}'}\n" + ONE_INSTANCE
    assert problems(text, PORT="http", BF="x") == [
        "listen.port: must be an integer (got str)",
        "placement.balance_factor: must be a number (got str)",
    ]


def test_misplaced_env_value_is_not_echoed() -> None:
    assert problems("admin: '${T}'\n" + ONE_INSTANCE, T=SECRET) == [
        "admin: must be a mapping (got str)"
    ]


def test_a_quoted_number_in_yaml_is_still_a_type_error() -> None:
    assert problems("listen: {port: '8080'}\n" + ONE_INSTANCE) == [
        "listen.port: must be an integer (got str)"
    ]


def test_dollar_escape_and_malformed_references() -> None:
    config = parse("store: {prefix: '$${NOT_A_VAR}'}\n" + ONE_INSTANCE)
    assert config.store.prefix == "${NOT_A_VAR}"
    for bad in ("${", "${1X}", "${A:-${B}}", "${A B}"):
        found = problems(f"store: {{prefix: '{bad}'}}\n" + ONE_INSTANCE)
        assert len(found) == 1 and found[0].startswith("store.prefix: invalid variable reference")


# -- validation --------------------------------------------------------------------------------

BASE = "instances: [{name: a, url: 'http://x:1'}, {name: b, url: 'http://y:2'}]\n"

METHODS = "(use one of CONNECT, DELETE, GET, HEAD, OPTIONS, PATCH, POST, PUT, TRACE)"

# (config added to BASE, the single problem it must produce); one line each, so unformatted
# fmt: off
INVALID = [
    # unknown keys, anywhere
    ("listen: {bogus: 1}", "listen.bogus: unknown key"),
    ("bogus: 1", "bogus: unknown key"),
    ("health: {intervall: 1s}", "health.intervall: unknown key (did you mean 'interval'?)"),
    ("failover: {status: {readyy: [X]}}", "failover.status.readyy: unknown key (did you mean 'ready'?)"),
    ("webhooks: {targets: [{url: 'http://x', x: 1}]}", "webhooks.targets[0].x: unknown key"),
    ("sessions: {rules: [{query: s, y: 1}]}", "sessions.rules[0].y: unknown key"),
    ("health: 5", "health: must be a mapping (got int)"),
    ("sessions: {rules: {query: s}}", "sessions.rules: must be a list (got dict)"),
    # types: bool is not an int, strings are not numbers
    ("listen: {port: true}", "listen.port: must be an integer (got bool)"),
    ("metrics: {enabled: 1}", "metrics.enabled: must be true or false (got 1)"),
    ("metrics: {enabled: 'yes'}", "metrics.enabled: must be true or false (got 'yes')"),
    ("listen: {workers: 1.5}", "listen.workers: must be an integer (got float)"),
    ("placement: {balance_factor: yes}", "placement.balance_factor: must be a number (got bool)"),
    ("listen: {host: 5}", "listen.host: must be a string (got int)"),
    ("listen: {host: ''}", "listen.host: must not be empty"),
    # ranges
    ("listen: {port: 0}", "listen.port: must be between 1 and 65535 (got 0)"),
    ("admin: {port: 65536}", "admin.port: must be between 1 and 65535 (got 65536)"),
    ("listen: {workers: 0}", "listen.workers: must be >= 1 (got 0)"),
    (
        "listen: {workers: 2}",
        "listen.workers: 2 workers: more than 1 needs store.url: the in-memory store cannot be shared between processes",
    ),
    ("placement: {balance_factor: 0.99}", "placement.balance_factor: must be >= 1 (got 0.99)"),
    ("health: {unhealthy_threshold: 0}", "health.unhealthy_threshold: must be >= 1 (got 0)"),
    ("health: {healthy_threshold: -1}", "health.healthy_threshold: must be >= 1 (got -1)"),
    ("passive: {consecutive_failures: 0}", "passive.consecutive_failures: must be >= 1 (got 0)"),
    ("passive: {max_ejection_percent: 101}", "passive.max_ejection_percent: must be between 0 and 100 (got 101)"),
    ("passive: {ejection_time: 10m}", "passive.ejection_time: must be <= max_ejection_time"),
    ("failover: {restore_concurrency: 0}", "failover.restore_concurrency: must be >= 1 (got 0)"),
    ("alerts: {webhook_backlog_threshold: 0}", "alerts.webhook_backlog_threshold: must be >= 1 (got 0)"),
    # durations and sizes
    ("health: {interval: 5x}", "health.interval: invalid duration '5x' (use e.g. 500ms, 2s, 5m, 7d)"),
    ("health: {timeout: 0}", "health.timeout: must be > 0"),
    ("limits: {upstream_timeout: 0s}", "limits.upstream_timeout: must be > 0"),
    ("failover: {hold_timeout: -1s}", "failover.hold_timeout: duration must not be negative (got '-1s')"),
    ("listen: {shutdown_timeout: 0ms}", "listen.shutdown_timeout: must be > 0"),
    ("limits: {max_body: 64M}", "limits.max_body: invalid size '64M' (use e.g. 64MiB, 512KiB, 100KB, 123)"),
    ("limits: {max_body: 0}", "limits.max_body: must be > 0"),
    # instances
    ("instances: [{name: a, url: 'http://x'}, {name: a, url: 'http://y'}]", "instances[1].name: duplicate instance name 'a'"),
    ("instances: [{name: 'a b', url: 'http://x'}]", "instances[0].name: must match ^[A-Za-z0-9_.-]{1,64}$ (got 'a b')"),
    ("instances: [{name: " + "n" * 65 + ", url: 'http://x'}]", "instances[0].name: must match ^[A-Za-z0-9_.-]{1,64}$ (got '" + "n" * 65 + "')"),
    ("instances: [{url: 'http://x'}]", "instances[0].name: required"),
    ("instances: [{name: a}]", "instances[0].url: required"),
    ("instances: [a]", "instances[0]: must be a mapping (got str)"),
    ("instances: {a: 1}", "instances: must be a list (got dict)"),
    ("instances: [{name: a, url: 'ftp://x'}]", "instances[0].url: must be an http:// or https:// URL with a host"),
    ("instances: [{name: a, url: 'http://'}]", "instances[0].url: must be an http:// or https:// URL with a host"),
    ("instances: [{name: a, url: 'x:3000'}]", "instances[0].url: must be an http:// or https:// URL with a host"),
    ("instances: [{name: a, url: 'http://x:99999'}]", "instances[0].url: must be a valid http:// or https:// URL"),
    ("instances: [{name: a, url: 'http://u:p@x'}]", "instances[0].url: must not contain credentials (use api_key)"),
    ("instances: [{name: a, url: 'http://x/?a=1'}]", "instances[0].url: must not contain a query or fragment"),
    ("instances: [{name: a, url: 'http://x', weight: 0}]", "instances[0].weight: must be > 0 (got 0)"),
    ("instances: [{name: a, url: 'http://x', weight: -1.5}]", "instances[0].weight: must be > 0 (got -1.5)"),
    ("instances: [{name: a, url: 'http://x', weight: true}]", "instances[0].weight: must be a number (got bool)"),
    ("instances: [{name: a, url: 'http://x', max_sessions: 0}]", "instances[0].max_sessions: must be >= 1 (got 0)"),
    ("instances: [{name: a, url: 'http://x', max_sessions: 1.5}]", "instances[0].max_sessions: must be an integer (got float)"),
    # sessions
    ("sessions: {id_pattern: '('}", "sessions.id_pattern: invalid regex '(': missing ), unterminated subpattern at position 0"),
    ("sessions: {rules: [{path: '[a'}]}", "sessions.rules[0].path: invalid regex '[a': unterminated character set at position 0"),
    ("sessions: {rules: [{path: '^/a/(?P<id>.+)'}]}", "sessions.rules[0].path: must contain a named group (?P<session>...) when it is the only source"),
    ("sessions: {rules: [{}]}", "sessions.rules[0]: needs a source: header, query, json, or a path with a (?P<session>...) group"),
    ("sessions: {rules: [{methods: [GET]}]}", "sessions.rules[0]: needs a source: header, query, json, or a path with a (?P<session>...) group"),
    ("sessions: {rules: [{header: X-A, query: s}]}", "sessions.rules[0]: give only one of header, query, json (got header, query)"),
    ("sessions: {rules: [{query: s, json: a}]}", "sessions.rules[0]: give only one of header, query, json (got query, json)"),
    ("sessions: {rules: [{header: 'X A'}]}", "sessions.rules[0].header: must be a valid header name (got 'X A')"),
    ("sessions: {rules: [{json: 'a..b'}]}", "sessions.rules[0].json: must be a dotted field path like data.session (got 'a..b')"),
    ("sessions: {rules: [{query: ''}]}", "sessions.rules[0].query: must not be empty"),
    ("sessions: {rules: [{query: s, methods: [POTS]}]}", "sessions.rules[0].methods[0]: unknown HTTP method 'POTS' " + METHODS),
    ("sessions: {rules: [{query: s, methods: []}]}", "sessions.rules[0].methods: must not be empty"),
    ("sessions: {unscoped: maybe}", "sessions.unscoped: must be one of any, reject (got 'maybe')"),
    ("sessions: {fan_out: ['GET']}", "sessions.fan_out[0]: must be 'METHOD /path' (got 'GET')"),
    ("sessions: {fan_out: ['GET api']}", "sessions.fan_out[0]: must start with '/' (got 'api')"),
    ("sessions: {fan_out: ['GOT /api']}", "sessions.fan_out[0]: unknown HTTP method 'GOT' " + METHODS),
    ("profile: wahaa", "profile: must be one of waha, evolution, generic (got 'wahaa')"),
    # paths and instance calls
    ("health: {path: ping}", "health.path: must start with '/' (got 'ping')"),
    ("webhooks: {path: hooks}", "webhooks.path: must start with '/' (got 'hooks')"),
    ("failover: {list: {path: api}}", "failover.list.path: must start with '/' (got 'api')"),
    ("failover: {restore: {path: /api/start}}", "failover.restore.path: must contain {session} (got '/api/start')"),
    ("failover: {stop: {path: /api/stop}}", "failover.stop.path: must contain {session} (got '/api/stop')"),
    ("failover: {status: {path: /api/s}}", "failover.status.path: must contain {session} (got '/api/s')"),
    ("failover: {stop: {method: YANK}}", "failover.stop.method: unknown HTTP method 'YANK' " + METHODS),
    ("failover: {status: {ready: []}}", "failover.status.ready: must not be empty"),
    ("failover: {status: {ready: [1]}}", "failover.status.ready[0]: must be a string (got int)"),
    ("failover: {status: {ready: WORKING}}", "failover.status.ready: must be a list (got str)"),
    # webhooks and alerts
    ("webhooks: {retries: {policy: random}}", "webhooks.retries.policy: must be one of constant, linear, exponential (got 'random')"),
    ("webhooks: {retries: {jitter: 1.5}}", "webhooks.retries.jitter: must be between 0 and 1 (got 1.5)"),
    ("webhooks: {retries: {jitter: -0.1}}", "webhooks.retries.jitter: must be between 0 and 1 (got -0.1)"),
    ("webhooks: {retries: {attempts: 0}}", "webhooks.retries.attempts: must be >= 1 (got 0)"),
    ("webhooks: {retries: {delay: 10s, max_delay: 5s}}", "webhooks.retries.delay: must be <= max_delay (10s > 5s)"),
    ("webhooks: {no_retry_statuses: [99]}", "webhooks.no_retry_statuses[0]: must be between 100 and 599 (got 99)"),
    ("passive: {statuses: [600]}", "passive.statuses[0]: must be between 100 and 599 (got 600)"),
    ("passive: {statuses: ['502']}", "passive.statuses[0]: must be an integer (got str)"),
    ("webhooks: {ordering: fifo}", "webhooks.ordering: must be one of per_session, none (got 'fifo')"),
    ("webhooks: {targets: [{url: 'mailto:x@y'}]}", "webhooks.targets[0].url: must be an http:// or https:// URL with a host"),
    ("webhooks: {targets: [{events: ['*']}]}", "webhooks.targets[0].url: required"),
    ("webhooks: {targets: [{url: 'http://x', events: []}]}", "webhooks.targets[0].events: must not be empty"),
    ("alerts: {webhooks: ['hooks.slack.com']}", "alerts.webhooks[0]: must be an http:// or https:// URL with a host"),
    ("store: {url: 'http://redis'}", "store.url: must be a redis://, rediss:// or unix:// URL"),
    # log
    ("log: {format: xml}", "log.format: must be one of text, json (got 'xml')"),
    ("log: {level: verbose}", "log.level: must be one of DEBUG, INFO, WARNING, ERROR (got 'verbose')"),
    # admin and listen
    ("admin: {host: 0.0.0.0, port: 8080, token: t}", "admin.port: admin and listen can't share the same address (0.0.0.0:8080 and 0.0.0.0:8080)"),
    ("admin: {host: 0.0.0.0}", "admin.token: required when the admin port listens beyond loopback (admin.host '0.0.0.0'): without a token anyone who reaches it could read the fleet"),
    ("admin: {host: 10.0.0.5, token: ''}", "admin.token: required when the admin port listens beyond loopback (admin.host '10.0.0.5'): without a token anyone who reaches it could read the fleet"),
    ("listen: {max_connections: 0}", "listen.max_connections: must be >= 1 (got 0)"),
    ("listen: {host: 127.0.0.1, port: 8081}", "admin.port: admin and listen can't share the same address (127.0.0.1:8081 and 127.0.0.1:8081)"),
    ("listen: {host: '::', port: 8081}", "admin.port: admin and listen can't share the same address (127.0.0.1:8081 and [::]:8081)"),
]
# fmt: on


@pytest.mark.parametrize(("snippet", "problem"), INVALID, ids=[p for _, p in INVALID])
def test_each_invalid_value_is_one_clear_problem(snippet: str, problem: str) -> None:
    text = snippet + "\n" + ("" if snippet.startswith("instances") else BASE)
    assert problems(text) == [problem]


@pytest.mark.parametrize(
    "snippet",
    [
        "listen: {workers: 4}\nstore: {url: 'redis://r:6379/0'}",
        "listen: {host: 127.0.0.1}\nadmin: {host: 127.0.0.2, port: 8080}",  # same port only
        "admin: {port: 8082}\nlisten: {port: 8081}",
        "passive: {max_ejection_percent: 0}",
        "passive: {max_ejection_percent: 100}",
        "webhooks: {retries: {jitter: 0}}",
        "webhooks: {retries: {jitter: 1}}",
        "failover: {grace: 0}",
        "placement: {balance_factor: 1}",
        "log: {level: warning}",
        "sessions: {rules: [{methods: [get, DELETE], path: '^/s/(?P<session>[^/]+)'}]}",
        "sessions: {rules: [{path: '^/v1/', header: X-Account}]}",
        "sessions: {fan_out: []}",
        "store: {url: 'rediss://user:pw@r:6380/1'}",
        "store: {url: 'unix:///run/redis.sock'}",
        "alerts: {webhooks: null}",
    ],
)
def test_valid_edge_values(snippet: str) -> None:
    parse(snippet + "\n" + BASE)


def test_every_problem_is_reported_at_once() -> None:
    text = """
    listen: {bogus: 1}
    health: {interval: 5x}
    instances:
      - {name: node-1, url: 'http://x:1'}
      - {name: node-1, url: 'http://x:2'}
    sessions: {id_pattern: '[a-'}
    """
    assert problems(text) == [
        "listen.bogus: unknown key",
        "health.interval: invalid duration '5x' (use e.g. 500ms, 2s, 5m, 7d)",
        "instances[1].name: duplicate instance name 'node-1'",
        "sessions.id_pattern: invalid regex '[a-': unterminated character set at position 0",
    ]


def test_cross_field_checks_still_run_beside_unrelated_problems() -> None:
    found = problems("listen: {workers: 3, bogus: 1}\nadmin: {port: 8080}\n" + ONE_INSTANCE)
    assert found == [
        "listen.bogus: unknown key",
        "listen.workers: 3 workers: more than 1 needs store.url: "
        "the in-memory store cannot be shared between processes",
        "admin.port: admin and listen can't share the same address "
        "(127.0.0.1:8080 and 0.0.0.0:8080)",
    ]


def test_cross_field_checks_skip_values_that_were_wrong() -> None:
    # delay falls back to its default when invalid: no second, misleading problem about it
    found = problems("webhooks: {retries: {delay: 5x, max_delay: 1s}}\n" + ONE_INSTANCE)
    assert found == ["webhooks.retries.delay: invalid duration '5x' (use e.g. 500ms, 2s, 5m, 7d)"]
    assert problems("listen: {port: 8081}\nadmin: 5\n" + ONE_INSTANCE) == [
        "admin: must be a mapping (got int)"
    ]
    assert problems("instances: [{url: 'http://x'}, {name: '!', url: 'http://y'}]") == [
        "instances[0].name: required",
        "instances[1].name: must match ^[A-Za-z0-9_.-]{1,64}$ (got '!')",
    ]


def test_normalisation() -> None:
    config = parse(
        """
        instances: [{name: a, url: 'http://x:1/base/'}]
        sessions: {rules: [{header: X-Session-ID, methods: [get]}], fan_out: ['get /api/x']}
        log: {level: Error}
        """
    )
    assert config.instances[0].url == "http://x:1/base"
    assert config.sessions.rules[0].header == "x-session-id"
    assert config.sessions.rules[0].methods == frozenset({"GET"})
    assert config.sessions.fan_out == (("GET", "/api/x"),)
    assert config.log.level == "ERROR"


# -- YAML errors --------------------------------------------------------------------------------


def test_yaml_syntax_error_is_one_problem_with_line_and_column() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config("listen:\n  port: [8080\n", source="router.yaml")
    [problem] = info.value.problems
    assert re.fullmatch(r"router\.yaml: line \d+, column \d+: .+", problem), problem


def test_yaml_duplicate_keys_are_an_error() -> None:
    assert problems("listen: {port: 1}\nlisten: {port: 2}\n" + ONE_INSTANCE) == [
        "yaml: line 2, column 1: duplicate key 'listen'"
    ]


def test_yaml_anchors_and_merge_keys_still_work() -> None:
    config = parse(
        """
        instances:
          - &node {name: a, url: 'http://x', weight: 2, max_sessions: 10}
          - {<<: *node, name: b}
        """
    )
    assert [(i.name, i.weight, i.max_sessions) for i in config.instances] == [
        ("a", 2.0, 10),
        ("b", 2.0, 10),
    ]


def test_top_level_must_be_a_mapping() -> None:
    assert problems("- a\n- b\n") == ["config: must be a mapping (got list)"]


# -- secrets ------------------------------------------------------------------------------------

SECRET = "s3cr3t-VALUE-do-not-leak"


def test_secrets_never_appear_in_problems() -> None:
    text = f"""
    admin: {{token: [{SECRET}]}}
    store: {{url: "ftp://{SECRET}@host"}}
    instances: [{{name: a, url: 'http://x', api_key: {{k: {SECRET}}}}}]
    webhooks:
      inbound_hmac_key: ["{SECRET}"]
      targets: [{{url: 'http://x', hmac_key: 12345}}]
    alerts: {{webhooks: ["not-a-url-{SECRET}", "ftp://{SECRET}"]}}
    """
    found = problems(text)
    assert found == [
        "admin.token: must be a string (got list)",
        "store.url: must be a redis://, rediss:// or unix:// URL",
        "instances[0].api_key: must be a string (got dict)",
        "webhooks.inbound_hmac_key: must be a string (got list)",
        "webhooks.targets[0].hmac_key: must be a string (got int)",
        "alerts.webhooks[0]: must be an http:// or https:// URL with a host",
        "alerts.webhooks[1]: must be an http:// or https:// URL with a host",
    ]
    assert not any(SECRET in p for p in found)


def test_secret_from_env_never_appears_in_problems() -> None:
    found = problems(
        "store: {url: '${R}'}\nalerts: {webhooks: ['${A}']}\n" + ONE_INSTANCE, R=SECRET, A=SECRET
    )
    assert len(found) == 2 and not any(SECRET in p for p in found)


def test_secrets_never_appear_in_repr_or_redacted() -> None:
    env = dict.fromkeys(FULL_ENV, SECRET)
    env["REDIS"] = f"redis://:{SECRET}@redis:6379/0"
    env["SLACK"] = f"https://hooks.slack.com/services/{SECRET}"
    config = parse(FULL, **env)
    assert config.admin.token == Secret(SECRET)
    assert SECRET not in repr(config) and SECRET not in str(config)
    view = redacted(config)
    dumped = json.dumps(view)  # JSON-able
    assert SECRET not in dumped
    assert view["admin"]["token"] == "***" and view["store"]["url"] == "***"
    assert view["alerts"]["webhooks"] == ["***"]
    assert view["instances"][0]["api_key"] == "***" and view["instances"][1]["api_key"] is None
    assert view["sessions"]["fan_out"] == ["GET /api/sessions", "POST /api/bulk"]
    assert view["sessions"]["id_pattern"] == "^[a-z]+$"
    assert view["health"]["interval"] == 0.5


def test_secret_in_a_yaml_syntax_error_is_not_echoed() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(f"admin: {{token: {SECRET}\n", env={})
    assert SECRET not in str(info.value)


# -- check_config (the CLI's check-config) --------------------------------------------------------


def test_check_config_ok(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "router.yaml"
    path.write_text(BASE)
    assert check_config(str(path)) == 0
    out, err = capsys.readouterr()
    assert out.startswith("config OK: 2 instances, profile waha, store memory")
    assert out.count("\n") == 1 and err == ""


def test_check_config_lists_every_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "router.yaml"
    path.write_text("listen: {bogus: 1}\nhealth: {interval: 5x}\n" + BASE)
    assert check_config(str(path)) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        "listen.bogus: unknown key",
        "health.interval: invalid duration '5x' (use e.g. 500ms, 2s, 5m, 7d)",
    ]


def test_check_config_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "nope.yaml"
    assert check_config(str(path)) == 2
    _, err = capsys.readouterr()
    assert err == f"{path}: cannot read: No such file or directory\n"


def test_check_config_yaml_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "router.yaml"
    path.write_text("listen: [\n")
    assert check_config(str(path)) == 2
    _, err = capsys.readouterr()
    assert err.startswith(f"{path}: line ")


# -- properties -------------------------------------------------------------------------------


@given(st.integers(min_value=1, max_value=3_600_000))
def test_any_millisecond_interval_round_trips(ms: int) -> None:
    config = parse_config(f"health: {{interval: {ms}ms}}\n{ONE_INSTANCE}", env={})
    assert config.health.interval == pytest.approx(ms / 1000)


@given(
    st.text(
        alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-",
        min_size=1,
        max_size=64,
    )
)
def test_any_valid_instance_name_is_accepted(name: str) -> None:
    config = parse_config(f"instances: [{{name: '{name}', url: 'http://x'}}]", env={})
    assert config.instances[0].name == name


@given(st.text(max_size=40))
def test_env_values_are_taken_verbatim(value: str) -> None:
    config = parse_config("store: {prefix: '${P}'}\n" + ONE_INSTANCE, env={"P": value})
    assert config.store.prefix == value


def test_metrics_switch_parses_from_yaml_and_env() -> None:
    assert parse(BASE).metrics.enabled is True
    assert parse(BASE + "metrics: {enabled: false}").metrics.enabled is False
    assert parse(BASE + "metrics: {enabled: '${M}'}", M="False").metrics.enabled is False


def test_loopback_admin_needs_no_token_and_api_keys_skip_empty() -> None:
    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.2"):
        assert parse(BASE + f"admin: {{host: '{host}'}}").admin.token is None
    c = parse(BASE + "listen: {api_keys: ['${K1}', '', '${K2:-}', k3-s3cret]}", K1="k1-s3cret")
    assert [k.value for k in c.listen.api_keys] == ["k1-s3cret", "k3-s3cret"]
    assert "s3cret" not in repr(c)


# -- the control plane per profile (issue 19) -----------------------------------------------


def test_each_profile_gets_its_own_control_plane_defaults() -> None:
    evo = parse(ONE_INSTANCE + "profile: evolution\n")
    assert evo.failover == PROFILE_DEFAULTS["evolution"][0]
    assert evo.failover.restore == InstanceCall("GET", "/instance/connect/{session}")
    assert evo.failover.stop is None  # Evolution API: nothing ends a copy and keeps its auth
    assert evo.failover.status == StatusCall("GET", "/instance/connectionState/{session}",
                                             "instance.state", frozenset({"open"}),
                                             frozenset({"refused"}))
    assert (evo.failover.list.path, evo.failover.list.state, evo.failover.list.confirm) == (
        "/instance/fetchInstances", "connectionStatus", True)
    assert evo.health.path == "/" and evo.sessions.fan_out == (("GET", "/instance/fetchInstances"),)
    for name in ("waha", "generic"):
        c = parse(ONE_INSTANCE + f"profile: {name}\n")
        assert (c.failover, c.health, c.sessions.fan_out) == (
            Config(instances=()).failover, Config(instances=()).health, (("GET", "/api/sessions"),))
    assert evo.failover.stop is None and parse(ONE_INSTANCE).failover.stop is not None


def test_a_key_replaces_only_itself_on_top_of_the_profile() -> None:
    c = parse(ONE_INSTANCE + "profile: evolution\nfailover: {status: {ready: [open, connecting]}, "
              "list: {confirm: false}}\nhealth: {interval: 2s}\n")
    assert c.failover.status.path == "/instance/connectionState/{session}"
    assert c.failover.status.ready == frozenset({"open", "connecting"})
    assert c.failover.list.path == "/instance/fetchInstances" and not c.failover.list.confirm
    assert (c.health.path, c.health.interval) == ("/", 2.0)
    env = parse("profile: ${P}\n" + ONE_INSTANCE, P="evolution")  # expanded before it is read
    assert env.failover.stop is None


@pytest.mark.parametrize(("text", "stop"), [
    ("failover: {stop: none}", None),
    ("failover: {stop: NONE}", None),
    ("profile: evolution\nfailover: {stop: {method: post, path: '/instance/close/{session}'}}",
     InstanceCall("POST", "/instance/close/{session}")),
    ("failover: {stop: {path: '/x/{session}/halt'}}", InstanceCall("POST", "/x/{session}/halt")),
])
def test_stop_may_be_none_or_a_call(text: str, stop: InstanceCall | None) -> None:
    assert parse(ONE_INSTANCE + text + "\n").failover.stop == stop


@pytest.mark.parametrize(("text", "problem"), [
    ("profile: evolution\nfailover: {stop: {path: '/instance/close/{session}'}}",
     "failover.stop: give both method and path (this profile has no stop call to start from), "
     "or none"),
    ("failover: {stop: halt}", "failover.stop: must be a mapping (got str)"),
    ("failover: {status: {field: 'instance..state'}}",
     "failover.status.field: must be a dotted field path like instance.state "
     "(got 'instance..state')"),
    ("failover: {status: {ready: [open], failed: [open, refused]}}",
     "failover.status.failed: a value can't mean both ready and failed: open"),
    ("failover: {status: {ready: []}}", "failover.status.ready: must not be empty"),
    ("failover: {list: {items: 'data.', name: ''}}",
     "failover.list.items: must be a dotted field path like instance.state (got 'data.')"),
    ("failover: {list: {name: ''}}", "failover.list.name: must not be empty"),
    ("failover: {list: {path: '/x/{session}', confirm: maybe}}",
     "failover.list.confirm: must be true or false (got 'maybe')"),
    ("profile: evolution\nstore: {url: 'redis://r:6379'}\nagent: {instance: node-1, url: "
     "'http://127.0.0.1:3001'}",
     "agent.stop_command: required when failover.stop is none (e.g. profile evolution: no call "
     "ends a copy without logging it out): the command that stops the instance, such as "
     "[docker, stop, evolution-1]"),
    ("profile: evolution\nagent: {instance: n, url: 'http://127.0.0.1:3001', stop_command: []}",
     "agent.stop_command: must not be empty"),
    ("profile: evo", "profile: must be one of waha, evolution, generic (got 'evo')"),
])
def test_check_config_refuses_bad_control_plane_keys(text: str, problem: str) -> None:
    assert problem in problems(ONE_INSTANCE + text + "\n")


def test_an_agent_of_an_evolution_instance_fences_with_its_command() -> None:
    c = parse_config("profile: evolution\nagent: {instance: evo-1, url: 'http://127.0.0.1:8081', "
                     "stop_command: [docker, stop, evo-1]}\n", agent=True)
    assert c.agent is not None and c.agent.stop_command == ("docker", "stop", "evo-1")
    assert c.failover.stop is None and c.health.path == "/"
