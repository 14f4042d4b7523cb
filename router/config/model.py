"""Frozen, validated configuration objects.

The loader (``router.config.loader``) builds these from YAML; nothing else constructs them
from untrusted input. Durations are float seconds, sizes are int bytes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

Profile = Literal["waha", "evolution", "generic"]
Unscoped = Literal["any", "reject"]
RetryPolicy = Literal["constant", "linear", "exponential"]
Ordering = Literal["per_session", "none"]
LogFormat = Literal["text", "json"]
AccessFormat = Literal["json", "combined"]


@dataclass(frozen=True, slots=True)
class Secret:
    """A string that never shows itself in repr, logs or error bodies."""

    value: str

    def __repr__(self) -> str:
        return "Secret('***')"

    def __str__(self) -> str:
        return "***"

    def __bool__(self) -> bool:
        return bool(self.value)


@dataclass(frozen=True, slots=True)
class ListenConfig:
    host: str = "0.0.0.0"
    port: int = 8080
    workers: int = 1
    # Bounded time to finish in-flight requests on SIGTERM (uvicorn's graceful shutdown).
    shutdown_timeout: float = 10.0
    # Idle keep-alive client connections are closed after this long.
    keepalive_timeout: float = 75.0
    # Client keys for the proxy port (X-Api-Key, ?x-api-key=, apikey); empty: open.
    api_keys: tuple[Secret, ...] = ()
    # Open client connections at most; beyond, a new one gets 503 and is closed.
    max_connections: int = 10000
    # Idempotency-Key on proxied POST/PATCH (kept responses, for outbox.idempotency_ttl);
    # false: the header is forwarded like any other. A restart applies a change.
    idempotency_keys: bool = True


@dataclass(frozen=True, slots=True)
class AdminConfig:
    host: str = "127.0.0.1"
    port: int = 8081
    token: Secret | None = None


@dataclass(frozen=True, slots=True)
class StoreConfig:
    url: Secret | None = None  # may carry a password: treated as a secret
    prefix: str = "wa-router:"


@dataclass(frozen=True, slots=True)
class PlacementConfig:
    balance_factor: float = 1.25


@dataclass(frozen=True, slots=True)
class InstanceConfig:
    name: str
    url: str
    weight: float = 1.0
    max_sessions: int | None = None
    api_key: Secret | None = None


@dataclass(frozen=True, slots=True)
class SessionRule:
    """One user rule. Exactly one source: ``path`` (with a ``session`` group), ``header``,
    ``query`` or ``json``. With header/query/json, ``path`` and ``methods`` are filters."""

    path: re.Pattern[str] | None = None
    header: str | None = None  # stored lower-case
    query: str | None = None
    json: str | None = None  # dotted field path, e.g. "account" or "data.session"
    methods: frozenset[str] | None = None  # upper-case; None = any method


@dataclass(frozen=True, slots=True)
class SessionsConfig:
    id_pattern: re.Pattern[str] = field(
        default_factory=lambda: re.compile(r"^[A-Za-z0-9_.@:-]{1,128}$")
    )
    rules: tuple[SessionRule, ...] = ()
    unscoped: Unscoped = "any"
    fan_out: tuple[tuple[str, str], ...] = (("GET", "/api/sessions"),)  # (METHOD, path)
    # JSON bodies larger than this are not parsed for a session id (the rule is skipped).
    json_body_limit: int = 1024 * 1024


@dataclass(frozen=True, slots=True)
class HealthConfig:
    path: str = "/ping"
    interval: float = 1.0
    timeout: float = 0.5
    unhealthy_threshold: int = 2
    healthy_threshold: int = 2


@dataclass(frozen=True, slots=True)
class PassiveConfig:
    consecutive_failures: int = 3
    statuses: frozenset[int] = frozenset({502, 503, 504})
    ejection_time: float = 10.0
    max_ejection_time: float = 300.0
    max_ejection_percent: int = 50


@dataclass(frozen=True, slots=True)
class InstanceCall:
    """A request the router makes to an instance; ``{session}`` is substituted."""

    method: str
    path: str


@dataclass(frozen=True, slots=True)
class StatusCall:
    """One session's state on an instance: ``field`` is the dotted path to it in the JSON
    answer; ``ready`` the values that mean it serves, ``failed`` those that mean a start
    will not get there (a restore gives up early). A 404, or an answer without the field,
    means the instance does not run the session."""

    method: str = "GET"
    path: str = "/api/sessions/{session}"
    field: str = "status"
    ready: frozenset[str] = frozenset({"WORKING"})
    failed: frozenset[str] = frozenset({"FAILED"})


@dataclass(frozen=True, slots=True)
class ListCall:
    """The sessions an instance holds: ``items`` is the dotted path to the array in the
    answer ("" for the answer itself), ``name`` and ``state`` the fields of each item,
    ``stopped`` the states that mean not running. ``confirm``: the list may show sessions
    this instance does not run (Evolution API lists the database's rows), so each one is
    confirmed with the status call."""

    method: str = "GET"
    path: str = "/api/sessions?all=true"
    items: str = ""
    name: str = "name"
    state: str = "status"
    stopped: frozenset[str] = frozenset({"STOPPED", "FAILED"})
    confirm: bool = False


@dataclass(frozen=True, slots=True)
class FailoverConfig:
    grace: float = 5.0
    hold_timeout: float = 15.0
    restore_concurrency: int = 4
    restore: InstanceCall = InstanceCall("POST", "/api/sessions/{session}/start")
    # None: the instances have no call that ends a copy and keeps its auth (Evolution API):
    # a session then moves only once its instance is down (drain = cordon, then stop it).
    stop: InstanceCall | None = InstanceCall("POST", "/api/sessions/{session}/stop")
    status: StatusCall = StatusCall()
    list: ListCall = ListCall()
    # Bounded memory under an outage: beyond this many held requests, answer 503 at once.
    max_held_requests: int = 10000
    # How long one restore may take (start + polling status until ready) before a retry.
    restore_timeout: float = 60.0
    restore_attempts: int = 5
    # Leader lease (Redis): who runs failover, restores and stale-copy stops.
    leader_ttl: float = 5.0
    # An instance whose agent renewed its lease this recently is fenced before its
    # sessions move (router.agent.gate); older than that, it counts as having no agent.
    agent_memory: float = 600.0


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    max_body: int = 64 * 1024 * 1024
    upstream_connect_timeout: float = 2.0
    upstream_timeout: float = 60.0
    client_header_timeout: float = 10.0
    # A request body that stalls this long between reads is cut off (408).
    client_body_timeout: float = 30.0


@dataclass(frozen=True, slots=True)
class WebhookTarget:
    url: str
    events: frozenset[str] = frozenset({"*"})
    hmac_key: Secret | None = None


@dataclass(frozen=True, slots=True)
class RetryConfig:
    policy: RetryPolicy = "exponential"
    delay: float = 2.0
    max_delay: float = 300.0
    attempts: int = 15
    jitter: float = 0.2


@dataclass(frozen=True, slots=True)
class WebhooksConfig:
    path: str = "/webhooks"
    inbound_hmac_key: Secret | None = None
    targets: tuple[WebhookTarget, ...] = ()
    retries: RetryConfig = RetryConfig()
    no_retry_statuses: frozenset[int] = frozenset({400, 401, 403, 404, 422})
    ordering: Ordering = "per_session"
    max_body: int = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class DelayRange:
    min: float = 2.0
    max: float = 6.0


@dataclass(frozen=True, slots=True)
class SendLimits:
    """Sends per session per window; 0 = no limit."""

    per_minute: int = 20
    per_hour: int = 300
    per_day: int = 2000


@dataclass(frozen=True, slots=True)
class OutboxConfig:
    enabled: bool = True
    delay: DelayRange = DelayRange()  # random gap between two sends of one session
    limits: SendLimits = SendLimits()
    typing: bool = False  # WAHA: startTyping, a pause growing with the text, stopTyping
    ttl: float = 24 * 3600.0  # default expiry of a queued message
    max_wait: float = 3600.0  # longest wait for a session that cannot send
    retries: RetryConfig = RetryConfig("exponential", 2.0, 60.0, 10, 0.2)
    keep: float = 7 * 86400.0  # how long finished messages and campaigns stay readable
    max_batch: int = 10000
    idempotency_ttl: float = 24 * 3600.0
    ack_timeout: float = 300.0  # a sent message with no message.ack by then is counted, listed
    reconcile_window: float = 120.0  # an unknown message seen sent (message.any) within: sent
    pause_after_failures: int = 5  # failed sends in a row that pause a session (a ban signal)
    stall_alert: float = 600.0  # a running campaign whose sent count stood still this long


@dataclass(frozen=True, slots=True)
class AlertsConfig:
    webhooks: tuple[Secret, ...] = ()  # Slack webhook URLs embed a secret token
    webhook_backlog_threshold: int = 1000


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    # false: no request accounting on the data path and no /metrics (for measuring what
    # metrics cost; the admin API then shows no per-instance request figures)
    enabled: bool = True


@dataclass(frozen=True, slots=True)
class AccessLogConfig:
    """One line per proxied request and per outbox send (nginx's and HAProxy's access log)."""

    enabled: bool = False
    format: AccessFormat = "json"
    path: str = "-"  # "-": stderr; a file is reopened on SIGUSR1 (logrotate)
    sample: float = 1.0  # the share of lines written (errors always are)


@dataclass(frozen=True, slots=True)
class LogConfig:
    format: LogFormat = "text"
    level: str = "INFO"
    access: AccessLogConfig = AccessLogConfig()


@dataclass(frozen=True, slots=True)
class AgentConfig:
    """``wa-router agent``: the self-fencing sidecar of one instance."""

    instance: str
    url: str
    api_key: Secret | None = None
    renew: float = 1.0
    fence_after: float = 3.0
    # Run to end every copy on the instance when ``failover.stop`` is none (no call ends
    # one session): e.g. ``[docker, stop, evolution-1]``; the fence is confirmed once the
    # instance refuses connections.
    stop_command: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Config:
    instances: tuple[InstanceConfig, ...]
    listen: ListenConfig = ListenConfig()
    admin: AdminConfig = AdminConfig()
    store: StoreConfig = StoreConfig()
    profile: Profile = "waha"
    placement: PlacementConfig = PlacementConfig()
    sessions: SessionsConfig = SessionsConfig()
    health: HealthConfig = HealthConfig()
    passive: PassiveConfig = PassiveConfig()
    failover: FailoverConfig = FailoverConfig()
    limits: LimitsConfig = LimitsConfig()
    webhooks: WebhooksConfig = WebhooksConfig()
    alerts: AlertsConfig = AlertsConfig()
    outbox: OutboxConfig = OutboxConfig()
    metrics: MetricsConfig = MetricsConfig()
    log: LogConfig = LogConfig()
    agent: AgentConfig | None = None
    source: str | None = None  # the file it was read from, for reloads


# -- per-profile defaults of the control plane ---------------------------------------------------

# Evolution API v2 (docs/evolution-control-plane.md): connectionState is the live socket on
# the server asked; fetchInstances lists database rows (maybe other servers'), so listed
# sessions are confirmed; no call ends a copy without logging it out, hence no stop.
_EVOLUTION_FAILOVER = FailoverConfig(
    restore=InstanceCall("GET", "/instance/connect/{session}"),
    stop=None,
    status=StatusCall("GET", "/instance/connectionState/{session}", "instance.state",
                      frozenset({"open"}), frozenset({"refused"})),
    list=ListCall("GET", "/instance/fetchInstances", "", "name", "connectionStatus",
                  frozenset({"close", "refused"}), confirm=True),
)

# The sections whose defaults depend on ``profile`` (keys left out of a section keep these).
PROFILE_DEFAULTS: dict[Profile, tuple[FailoverConfig, HealthConfig, SessionsConfig]] = {
    "waha": (FailoverConfig(), HealthConfig(), SessionsConfig()),
    "generic": (FailoverConfig(), HealthConfig(), SessionsConfig()),
    "evolution": (_EVOLUTION_FAILOVER, HealthConfig(path="/"),
                  SessionsConfig(fan_out=(("GET", "/instance/fetchInstances"),))),
}
