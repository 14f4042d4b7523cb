"""Instance health: a pure state machine. No I/O, no asyncio, no clock reads.

Every function takes the current :class:`InstanceHealth` and an event (a probe result, a
failure or success on live traffic, a timer tick) and returns the next state plus the
actions the async layer must perform. ``now`` is always passed in, so tests drive time by
hand and every transition is deterministic.

States and transitions (``T_up``/``T_down`` = ``health.healthy_threshold`` /
``unhealthy_threshold``, ``N`` = ``passive.consecutive_failures``)::

    HEALTHY   --T_down failed probes-------------------------> UNHEALTHY  MarkDown
    HEALTHY   --N passive failures, may_eject()--------------> EJECTED    Eject, MarkDown
    UNHEALTHY --T_up OK probes-------------------------------> HEALTHY    MarkUp, Rediscover
    EJECTED   --T_up OK probes-------------------------------> HEALTHY    MarkUp, Rediscover
    EJECTED   --tick at ejected_until, last probe OK/none----> HEALTHY    MarkUp, Rediscover
    EJECTED   --tick at ejected_until, last probe failed-----> UNHEALTHY  (still down: no action)
    not HEALTHY for >= failover.grace (tick, once per outage) StartFailover

Decisions, with the proxies operators compare us with:

* Recovery is owned by the active check. An ejected instance whose ``/ping`` passes
  ``T_up`` times in a row comes back before its ejection time is over, as Envoy does by
  default (``successful_active_health_check_uneject_host: true``). Ejecting holds its
  sessions' traffic and, past ``grace``, migrates them all; a false ejection of a live
  instance must not last longer than the checks need to clear it.
* The ejection timer is the bound for inconclusive checks. At ``ejected_until`` the instance
  returns like Envoy's timer un-ejection, but only if its latest probe did not fail
  (``fail_streak == 0``); otherwise it stays out as UNHEALTHY and waits for ``T_up`` OK
  probes, as HAProxy waits for ``rise``.
* Passive checks only eject a HEALTHY instance. An instance already out of service gets
  nothing from more failures (in-flight requests failing after the verdict), and its timer
  is not extended by them.
* ``passive_failures`` is 0 whenever the instance is not HEALTHY: a returning instance
  starts with a clean slate, like Envoy resetting its consecutive-5xx counter on ejection.
* An outage is the span from leaving HEALTHY to the next MarkUp. ``down_since`` is set once
  at its start (an EJECTED instance that turns UNHEALTHY keeps it), so ``grace`` counts from
  the first moment the instance stopped taking traffic.
* Draining is not a health state: it is an operator flag kept elsewhere.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, replace

from router import backoff
from router.config.model import HealthConfig, PassiveConfig

__all__ = [
    "Action",
    "Eject",
    "InstanceHealth",
    "MarkDown",
    "MarkUp",
    "ProbeNow",
    "Rediscover",
    "StartFailover",
    "Status",
    "ejection_time",
    "may_eject",
    "on_passive_failure",
    "on_passive_success",
    "on_probe",
    "on_tick",
    "out_of_service",
]


class Status(enum.Enum):
    """Health status of one instance, as the admin API spells it."""

    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"
    EJECTED = "ejected"


@dataclass(frozen=True, slots=True)
class InstanceHealth:
    """Everything the machine remembers about one instance. Immutable: events return a new
    value (or the same object when nothing changed, so callers can test ``is``)."""

    status: Status = Status.HEALTHY
    ok_streak: int = 0  # consecutive successful active probes
    fail_streak: int = 0  # consecutive failed active probes
    passive_failures: int = 0  # consecutive passive failures on live traffic
    ejections: int = 0  # how many times ejected (drives the growing ejection time)
    ejected_until: float | None = None
    down_since: float | None = None  # when it stopped being HEALTHY (for failover.grace)
    failed_over: bool = False  # failover already started for this outage

    @property
    def in_service(self) -> bool:
        """True when the instance may receive traffic (draining is checked elsewhere)."""
        return self.status is Status.HEALTHY


# -- actions --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MarkDown:
    """Stop routing to the instance; its sessions' requests are held from now on."""

    reason: str


@dataclass(frozen=True, slots=True)
class MarkUp:
    """Route to the instance again."""


@dataclass(frozen=True, slots=True)
class Eject:
    """Passive ejection until ``until`` (the clock the caller passed as ``now``)."""

    until: float
    reason: str


@dataclass(frozen=True, slots=True)
class ProbeNow:
    """Run an active probe now instead of waiting for the interval. A hint: the caller should
    coalesce it with a probe already in flight, since a burst of failing requests emits one
    per failure."""


@dataclass(frozen=True, slots=True)
class StartFailover:
    """The outage outlived ``failover.grace``: reassign and restore the instance's sessions."""


@dataclass(frozen=True, slots=True)
class Rediscover:
    """List the instance's sessions and reconcile them with the map (it just came back)."""


Action = MarkDown | MarkUp | Eject | ProbeNow | StartFailover | Rediscover


# -- pure helpers ---------------------------------------------------------------------------


def ejection_time(ejections: int, passive: PassiveConfig) -> float:
    """Length of the ``ejections``-th ejection (1-based): ``ejection_time * 2**(n-1)``,
    capped at ``max_ejection_time``. ``n < 1`` counts as the first ejection."""
    return backoff.delay(ejections, base=passive.ejection_time, cap=passive.max_ejection_time)


def may_eject(ejected_count: int, total: int, max_percent: int) -> bool:
    """May one more instance be ejected?

    ``ejected_count`` is the number of instances already out of service, ``total`` the fleet
    size. After the ejection at most ``max_percent`` % of the fleet may be out, and at least
    one instance must stay in service (Envoy's panic threshold idea: never eject them all).
    Pass every instance that is not HEALTHY (see :func:`out_of_service`), not only the
    ejected ones: while a crashed instance's sessions are being restored on the survivors,
    their load may make them fail a few requests, and ejecting them too would cascade.
    """
    after = max(ejected_count, 0) + 1
    # Integer arithmetic: 50 % of 3 is 1.5, and a float compare must not round it to 2.
    return after < total and after * 100 <= max_percent * total


def out_of_service(states: Iterable[InstanceHealth]) -> int:
    """How many of ``states`` are not HEALTHY: the ``ejected_count`` for :func:`may_eject`."""
    return sum(1 for h in states if h.status is not Status.HEALTHY)


# -- events ---------------------------------------------------------------------------------


def _mark_up(h: InstanceHealth, ok_streak: int) -> tuple[InstanceHealth, list[Action]]:
    """Back to HEALTHY: the outage is over, so its failover latch and timers reset."""
    up = replace(
        h,
        status=Status.HEALTHY,
        ok_streak=ok_streak,
        fail_streak=0,
        passive_failures=0,
        ejected_until=None,
        down_since=None,
        failed_over=False,
    )
    # Rediscover on every return: while it was away, sessions may have moved (stale copies
    # to stop) or been started on it directly (unknown ones to adopt).
    return up, [MarkUp(), Rediscover()]


def on_probe(
    h: InstanceHealth, ok: bool, now: float, cfg: HealthConfig
) -> tuple[InstanceHealth, list[Action]]:
    """One active probe result. A result resets the opposite streak."""
    if ok:
        streak = h.ok_streak + 1
        if h.status is not Status.HEALTHY and streak >= max(cfg.healthy_threshold, 1):
            return _mark_up(h, streak)
        return replace(h, ok_streak=streak, fail_streak=0), []
    streak = h.fail_streak + 1
    if h.status is Status.HEALTHY and streak >= max(cfg.unhealthy_threshold, 1):
        down = replace(
            h,
            status=Status.UNHEALTHY,
            ok_streak=0,
            fail_streak=streak,
            passive_failures=0,
            down_since=now,
        )
        return down, [MarkDown(f"active: {streak} failed health check(s)")]
    # An EJECTED instance stays EJECTED: the streak decides what happens at ejected_until.
    return replace(h, ok_streak=0, fail_streak=streak), []


def on_passive_failure(
    h: InstanceHealth,
    now: float,
    passive: PassiveConfig,
    *,
    ejected_count: int,
    total: int,
    connect_error: bool,
) -> tuple[InstanceHealth, list[Action]]:
    """A live request failed (connect error, timeout, or a status in ``passive.statuses``).

    ``ejected_count``/``total`` feed :func:`may_eject`. A connect error asks for an immediate
    probe (the process may be gone: detect it now, not at the next interval). When the
    threshold is reached but the fleet may not lose another instance, the instance stays in
    service and a probe is requested instead; each further failure asks again.
    """
    if h.status is not Status.HEALTHY:
        return h, []
    failures = h.passive_failures + 1
    probe: list[Action] = [ProbeNow()] if connect_error else []
    if failures < max(passive.consecutive_failures, 1):
        return replace(h, passive_failures=failures), probe
    if not may_eject(ejected_count, total, passive.max_ejection_percent):
        return replace(h, passive_failures=failures), [ProbeNow()]
    n = h.ejections + 1
    until = now + ejection_time(n, passive)
    kind = "connect error" if connect_error else "failure"
    reason = f"passive: {failures} consecutive failures on live traffic (last: {kind})"
    ejected = replace(
        h,
        status=Status.EJECTED,
        ok_streak=0,  # recovery needs fresh OK probes, not ones from before the failures
        passive_failures=0,
        ejections=n,
        ejected_until=until,
        down_since=now,
    )
    return ejected, [Eject(until, reason), MarkDown(reason), *probe]


def on_passive_success(h: InstanceHealth) -> InstanceHealth:
    """A live request succeeded: the passive failure run is broken."""
    return h if h.passive_failures == 0 else replace(h, passive_failures=0)


def on_tick(h: InstanceHealth, now: float, grace: float) -> tuple[InstanceHealth, list[Action]]:
    """Periodic timer: ends an ejection at ``ejected_until`` and starts failover once the
    outage has lasted ``grace`` (``failover.grace``). Returns ``h`` itself when idle."""
    actions: list[Action] = []
    if h.status is Status.EJECTED and h.ejected_until is not None and now >= h.ejected_until:
        if h.fail_streak == 0:
            return _mark_up(h, h.ok_streak)
        # The last probe failed: the timer is over but the instance is not fit; the active
        # check decides its return. Already marked down, so nothing to announce.
        h = replace(h, status=Status.UNHEALTHY, ejected_until=None)
    if (
        h.status is not Status.HEALTHY
        and not h.failed_over
        and h.down_since is not None
        and now - h.down_since >= grace
    ):
        h = replace(h, failed_over=True)
        actions.append(StartFailover())
    return h, actions
