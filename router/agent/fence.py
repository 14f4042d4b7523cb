"""The agent's pure state machine: lease renewals in, actions out. No I/O, no clock reads.

The agent renews its lease every ``renew``. It counts its lease from the moment it SENT a
renewal that succeeded (the reply may come late, the lease in Redis started no earlier),
so the lease Redis holds (TTL ``fence_after``) always outlives the agent's own belief.

    running --no successful renewal for fence_after----> fenced    SelfFence
    fenced  --every renew while still not renewed-------> fenced    StopAll
    fenced  --a renewal succeeds------------------------> running   StandDown
    (start) --first renewal succeeds--------------------> running   Reconcile
    running --renewal reports a new stop order----------> running   ExecuteOrder
    ExecuteOrder finished with nothing left running -----------------> Ack

A restarted agent knows nothing of its past: it counts ``fence_after`` from its start
(so a Redis it cannot reach fences the instance as if the lease had just been lost), and
its first successful renewal reconciles like a healing (sessions may have moved while it
was away).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

__all__ = [
    "Ack",
    "Action",
    "AgentState",
    "ExecuteOrder",
    "Reconcile",
    "Renew",
    "SelfFence",
    "StandDown",
    "StopAll",
    "Timing",
    "on_order_done",
    "on_renewed",
    "on_tick",
    "start",
]


@dataclass(frozen=True, slots=True)
class Timing:
    renew: float = 1.0
    fence_after: float = 3.0


@dataclass(frozen=True, slots=True)
class AgentState:
    started: float
    last_ok: float | None = None  # send time of the latest successful renewal
    renewing: float | None = None  # send time of the renewal in flight
    next_renew: float = 0.0
    fenced_since: float | None = None
    last_sweep: float | None = None  # latest stop-everything sweep while fenced
    acked: str | None = None  # the latest stop order acknowledged
    executing: str | None = None  # the stop order being carried out

    @property
    def fenced(self) -> bool:
        return self.fenced_since is not None

    def deadline(self, t: Timing) -> float:
        """When the agent fences itself unless a renewal succeeds first."""
        return (self.started if self.last_ok is None else self.last_ok) + t.fence_after


# -- actions ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Renew:
    """Send one renewal now (and read the instance's stop order with it)."""


@dataclass(frozen=True, slots=True)
class SelfFence:
    """The lease is lost: stop every session on the local instance, and say so."""

    since: float  # when the lease was last known held (or the agent started)


@dataclass(frozen=True, slots=True)
class StopAll:
    """Still fenced: stop any session that started again."""


@dataclass(frozen=True, slots=True)
class StandDown:
    """The lease is back: stop fencing, and stop the local copies the map assigns elsewhere."""

    fenced_for: float


@dataclass(frozen=True, slots=True)
class Reconcile:
    """First renewal after start: stop the local copies the map assigns elsewhere."""


@dataclass(frozen=True, slots=True)
class ExecuteOrder:
    """The leader ordered this instance stopped: stop every local session."""

    order: str


@dataclass(frozen=True, slots=True)
class Ack:
    """Tell the leader the order is done: nothing runs here any more."""

    order: str


Action = Renew | SelfFence | StopAll | StandDown | Reconcile | ExecuteOrder | Ack


# -- events -------------------------------------------------------------------------------


def start(now: float) -> AgentState:
    """A fresh agent: renew at once, fence at ``now + fence_after`` unless renewed."""
    return AgentState(started=now, next_renew=now)


def on_tick(s: AgentState, now: float, t: Timing) -> tuple[AgentState, list[Action]]:
    """Periodic timer: starts a due renewal, fences when the deadline passed, and keeps
    sweeping while fenced. Returns ``s`` itself when idle."""
    actions: list[Action] = []
    if s.renewing is None and now >= s.next_renew:
        s = replace(s, renewing=now)
        actions.append(Renew())
    if not s.fenced and now >= s.deadline(t):
        since = s.started if s.last_ok is None else s.last_ok
        s = replace(s, fenced_since=now, last_sweep=now)
        actions.append(SelfFence(since))
    elif s.fenced and s.last_sweep is not None and now - s.last_sweep >= t.renew:
        s = replace(s, last_sweep=now)
        actions.append(StopAll())
    return s, actions


def on_renewed(
    s: AgentState, ok: bool, sent: float, now: float, t: Timing, order: str | None = None
) -> tuple[AgentState, list[Action]]:
    """A renewal sent at ``sent`` came back: ``ok`` when Redis took it, ``order`` the stop
    order currently posted for this instance (read in the same round trip)."""
    s = replace(s, renewing=None, next_renew=sent + t.renew)
    if not ok:
        return s, []
    actions: list[Action] = []
    first = s.last_ok is None
    # A late reply of an older renewal must not move the lease back in time.
    last_ok = sent if s.last_ok is None else max(s.last_ok, sent)
    if s.fenced and sent >= (s.fenced_since or sent):
        # Only a renewal sent after fencing proves the lease is held again: one sent
        # before may have landed in Redis before the key expired, or not at all.
        actions.append(StandDown(now - (s.fenced_since or now)))
        s = replace(s, last_ok=last_ok, fenced_since=None, last_sweep=None)
    elif s.fenced:
        return s, []
    else:
        s = replace(s, last_ok=last_ok)
        if first:
            actions.append(Reconcile())
    if order is not None and order != s.acked and order != s.executing:
        s = replace(s, executing=order)
        actions.append(ExecuteOrder(order))
    return s, actions


def on_order_done(s: AgentState, order: str, ok: bool) -> tuple[AgentState, list[Action]]:
    """The stop order finished: ``ok`` when nothing runs locally any more. A failed order
    is retried at the next renewal that still reports it."""
    if s.executing != order:
        return s, []
    if not ok:
        return replace(s, executing=None), []
    return replace(s, executing=None, acked=order), [Ack(order)]
