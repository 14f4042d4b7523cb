"""Tests for router.health: the pure instance-health state machine (no event loop, no clock).

A table of (start state, events, expected end state, expected actions) covers every
transition; hypothesis drives random event sequences, for one instance and for a fleet,
and checks the invariants after every step.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from router.config.model import HealthConfig, PassiveConfig
from router.health import (
    Action,
    Eject,
    InstanceHealth,
    MarkDown,
    MarkUp,
    ProbeNow,
    Rediscover,
    StartFailover,
    Status,
    ejection_time,
    may_eject,
    on_passive_failure,
    on_passive_success,
    on_probe,
    on_tick,
    out_of_service,
)

H, U, E = Status.HEALTHY, Status.UNHEALTHY, Status.EJECTED
HC = HealthConfig(unhealthy_threshold=2, healthy_threshold=2)
HC1 = HealthConfig(unhealthy_threshold=1, healthy_threshold=1)
HC3 = HealthConfig(unhealthy_threshold=3, healthy_threshold=3)
PC = PassiveConfig(consecutive_failures=3, ejection_time=10.0, max_ejection_time=300.0)
PC1 = PassiveConfig(consecutive_failures=1, ejection_time=10.0, max_ejection_time=300.0)
GRACE = 5.0
PROPS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# -- events: tiny records, so a table row reads as a story ---------------------------------


@dataclass(frozen=True)
class Probe:
    ok: bool
    at: float


@dataclass(frozen=True)
class Fail:
    """A passive failure on live traffic."""

    at: float
    connect: bool = False
    ejected: int = 0  # other instances out of service
    total: int = 3


@dataclass(frozen=True)
class Success:
    """A passive success on live traffic."""


@dataclass(frozen=True)
class Tick:
    at: float


Event = Probe | Fail | Success | Tick


def step(
    h: InstanceHealth,
    ev: Event,
    hc: HealthConfig = HC,
    pc: PassiveConfig = PC,
    grace: float = GRACE,
) -> tuple[InstanceHealth, list[Action]]:
    if isinstance(ev, Probe):
        return on_probe(h, ev.ok, ev.at, hc)
    if isinstance(ev, Fail):
        return on_passive_failure(
            h, ev.at, pc, ejected_count=ev.ejected, total=ev.total, connect_error=ev.connect
        )
    if isinstance(ev, Success):
        return on_passive_success(h), []
    return on_tick(h, ev.at, grace)


def run(
    h: InstanceHealth,
    events: list[Event],
    hc: HealthConfig = HC,
    pc: PassiveConfig = PC,
    grace: float = GRACE,
) -> tuple[InstanceHealth, list[Action]]:
    out: list[Action] = []
    for ev in events:
        h, actions = step(h, ev, hc, pc, grace)
        out.extend(actions)
    return h, out


# Frequently used start states.
HEALTHY = InstanceHealth()
DOWN = InstanceHealth(status=U, fail_streak=2, down_since=100.0)  # went down at t=100
EJECTED = InstanceHealth(status=E, ejections=1, ejected_until=110.0, down_since=100.0)
UP_AGAIN: list[Action] = [MarkUp(), Rediscover()]


def ejected_reason(n: int, kind: str = "failure") -> str:
    return f"passive: {n} consecutive failures on live traffic (last: {kind})"


# (id, start, events, health cfg, passive cfg, expected end state, expected actions)
TABLE: list[
    tuple[str, InstanceHealth, list[Event], HealthConfig, PassiveConfig, InstanceHealth, list[Action]]
] = [
    # -- active checks, HEALTHY -> UNHEALTHY --
    ("ok probe counts", HEALTHY, [Probe(True, 1)], HC, PC,
     InstanceHealth(ok_streak=1), []),
    ("one failure below threshold 2", HEALTHY, [Probe(False, 1)], HC, PC,
     InstanceHealth(fail_streak=1), []),
    ("threshold 2 reached", HEALTHY, [Probe(False, 1), Probe(False, 2)], HC, PC,
     InstanceHealth(status=U, fail_streak=2, down_since=2.0),
     [MarkDown("active: 2 failed health check(s)")]),
    ("threshold 1: one failure is enough", HEALTHY, [Probe(False, 7)], HC1, PC,
     InstanceHealth(status=U, fail_streak=1, down_since=7.0),
     [MarkDown("active: 1 failed health check(s)")]),
    ("threshold 3: two failures are not", HEALTHY, [Probe(False, 1), Probe(False, 2)], HC3, PC,
     InstanceHealth(fail_streak=2), []),
    ("threshold 3 reached", HEALTHY, [Probe(False, 1), Probe(False, 2), Probe(False, 3)], HC3,
     PC, InstanceHealth(status=U, fail_streak=3, down_since=3.0),
     [MarkDown("active: 3 failed health check(s)")]),
    ("an ok probe resets the fail streak", HEALTHY,
     [Probe(False, 1), Probe(True, 2), Probe(False, 3)], HC, PC,
     InstanceHealth(fail_streak=1), []),
    ("a failed probe resets the ok streak", InstanceHealth(ok_streak=5), [Probe(False, 1)], HC,
     PC, InstanceHealth(fail_streak=1), []),
    ("going down clears passive failures", InstanceHealth(passive_failures=2),
     [Probe(False, 1)], HC1, PC, InstanceHealth(status=U, fail_streak=1, down_since=1.0),
     [MarkDown("active: 1 failed health check(s)")]),
    ("more failures while down: no new MarkDown", DOWN, [Probe(False, 101), Probe(False, 102)],
     HC, PC, replace(DOWN, fail_streak=4), []),
    # -- active checks, UNHEALTHY -> HEALTHY --
    ("one ok below threshold 2", DOWN, [Probe(True, 101)], HC, PC,
     replace(DOWN, ok_streak=1, fail_streak=0), []),
    ("recovery at threshold 2", DOWN, [Probe(True, 101), Probe(True, 102)], HC, PC,
     InstanceHealth(ok_streak=2), UP_AGAIN),
    ("recovery at threshold 1", DOWN, [Probe(True, 101)], HC1, PC,
     InstanceHealth(ok_streak=1), UP_AGAIN),
    ("threshold 3: two oks are not enough", DOWN, [Probe(True, 101), Probe(True, 102)], HC3,
     PC, replace(DOWN, ok_streak=2, fail_streak=0), []),
    ("a failure in between restarts the count", DOWN,
     [Probe(True, 101), Probe(False, 102), Probe(True, 103)], HC, PC,
     replace(DOWN, ok_streak=1, fail_streak=0), []),
    ("recovery resets the failover latch", replace(DOWN, failed_over=True),
     [Probe(True, 120), Probe(True, 121)], HC, PC, InstanceHealth(ok_streak=2), UP_AGAIN),
    ("recovery keeps the ejection count", replace(DOWN, ejections=3),
     [Probe(True, 101), Probe(True, 102)], HC, PC, InstanceHealth(ok_streak=2, ejections=3),
     UP_AGAIN),
    # -- passive checks --
    ("passive failures below threshold", HEALTHY, [Fail(1), Fail(2)], HC, PC,
     InstanceHealth(passive_failures=2), []),
    ("passive threshold ejects", HEALTHY, [Fail(1), Fail(2), Fail(3)], HC, PC,
     InstanceHealth(status=E, ejections=1, ejected_until=13.0, down_since=3.0),
     [Eject(13.0, ejected_reason(3)), MarkDown(ejected_reason(3))]),
    ("passive threshold 1", HEALTHY, [Fail(4)], HC, PC1,
     InstanceHealth(status=E, ejections=1, ejected_until=14.0, down_since=4.0),
     [Eject(14.0, ejected_reason(1)), MarkDown(ejected_reason(1))]),
    ("connect error asks for a probe", HEALTHY, [Fail(1, connect=True)], HC, PC,
     InstanceHealth(passive_failures=1), [ProbeNow()]),
    ("connect error at the threshold: eject and probe", InstanceHealth(passive_failures=2),
     [Fail(5, connect=True)], HC, PC,
     InstanceHealth(status=E, ejections=1, ejected_until=15.0, down_since=5.0),
     [Eject(15.0, ejected_reason(3, "connect error")),
      MarkDown(ejected_reason(3, "connect error")), ProbeNow()]),
    ("ejection drops the ok streak", InstanceHealth(ok_streak=9, passive_failures=2), [Fail(1)],
     HC, PC, InstanceHealth(status=E, ejections=1, ejected_until=11.0, down_since=1.0),
     [Eject(11.0, ejected_reason(3)), MarkDown(ejected_reason(3))]),
    ("ejection keeps a fail streak below threshold", InstanceHealth(fail_streak=1,
     passive_failures=2), [Fail(1)], HC, PC,
     InstanceHealth(status=E, fail_streak=1, ejections=1, ejected_until=11.0, down_since=1.0),
     [Eject(11.0, ejected_reason(3)), MarkDown(ejected_reason(3))]),
    ("second ejection lasts twice as long", InstanceHealth(ejections=1, passive_failures=2),
     [Fail(50)], HC, PC,
     InstanceHealth(status=E, ejections=2, ejected_until=70.0, down_since=50.0),
     [Eject(70.0, ejected_reason(3)), MarkDown(ejected_reason(3))]),
    ("ejection time capped at 300 s", InstanceHealth(ejections=5, passive_failures=2),
     [Fail(1000)], HC, PC,
     InstanceHealth(status=E, ejections=6, ejected_until=1300.0, down_since=1000.0),
     [Eject(1300.0, ejected_reason(3)), MarkDown(ejected_reason(3))]),
    ("max_ejection_percent refuses: stay, probe", InstanceHealth(passive_failures=2),
     [Fail(1, ejected=1, total=3)], HC, PC, InstanceHealth(passive_failures=3), [ProbeNow()]),
    ("refused: every further failure asks again", InstanceHealth(passive_failures=2),
     [Fail(1, ejected=1), Fail(2, ejected=1)], HC, PC, InstanceHealth(passive_failures=4),
     [ProbeNow(), ProbeNow()]),
    ("refused, then room appears: eject", InstanceHealth(passive_failures=2),
     [Fail(1, ejected=1), Fail(2, ejected=0)], HC, PC,
     InstanceHealth(status=E, ejections=1, ejected_until=12.0, down_since=2.0),
     [ProbeNow(), Eject(12.0, ejected_reason(4)), MarkDown(ejected_reason(4))]),
    ("never the last one: a fleet of one", InstanceHealth(passive_failures=2),
     [Fail(1, total=1)], HC, replace(PC, max_ejection_percent=100),
     InstanceHealth(passive_failures=3), [ProbeNow()]),
    ("a success resets the passive run", HEALTHY,
     [Fail(1), Fail(2), Success(), Fail(3), Fail(4)], HC, PC,
     InstanceHealth(passive_failures=2), []),
    ("passive failure while unhealthy: ignored", DOWN, [Fail(101), Fail(102, connect=True)],
     HC, PC1, DOWN, []),
    ("passive failure while ejected: ignored, timer not extended", EJECTED,
     [Fail(101), Fail(102, connect=True)], HC, PC1, EJECTED, []),
    ("a passive success does not touch probe streaks", InstanceHealth(fail_streak=1),
     [Success()], HC, PC, InstanceHealth(fail_streak=1), []),
    # -- ejected: recovery by probes, or by the timer --
    ("ejected: one ok probe counts", EJECTED, [Probe(True, 101)], HC, PC,
     replace(EJECTED, ok_streak=1), []),
    ("ejected: ok probes end the ejection early", EJECTED,
     [Probe(True, 101), Probe(True, 102)], HC, PC,
     InstanceHealth(ok_streak=2, ejections=1), UP_AGAIN),
    ("ejected: failed probes keep it ejected", EJECTED,
     [Probe(False, 101), Probe(False, 102), Probe(False, 103)], HC, PC,
     replace(EJECTED, fail_streak=3), []),
    ("ejected: tick before the timer", EJECTED, [Tick(104.0)], HC, PC, EJECTED, []),
    ("ejected: timer with no probe since: back", EJECTED, [Tick(110.0)], HC, PC,
     InstanceHealth(ejections=1), UP_AGAIN),
    ("ejected: timer after an ok probe: back", EJECTED, [Probe(True, 101), Tick(110.0)], HC, PC,
     InstanceHealth(ok_streak=1, ejections=1), UP_AGAIN),
    ("ejected: timer after a failed probe: unhealthy, no new MarkDown",
     replace(EJECTED, failed_over=True), [Probe(False, 109), Tick(110.0)], HC, PC,
     InstanceHealth(status=U, fail_streak=1, ejections=1, down_since=100.0, failed_over=True),
     []),
    ("ejected then unhealthy: ok probes bring it back", EJECTED,
     [Probe(False, 109), Tick(110.0), Probe(True, 111), Probe(True, 112)], HC, PC,
     InstanceHealth(ok_streak=2, ejections=1), [StartFailover(), *UP_AGAIN]),
    ("ejected: a late tick still ends it", EJECTED, [Tick(500.0)], HC, PC,
     InstanceHealth(ejections=1), UP_AGAIN),
    # -- failover grace --
    ("healthy: ticks do nothing", HEALTHY, [Tick(1e9)], HC, PC, HEALTHY, []),
    ("just before grace", DOWN, [Tick(104.999)], HC, PC, DOWN, []),
    ("exactly at grace", DOWN, [Tick(105.0)], HC, PC, replace(DOWN, failed_over=True),
     [StartFailover()]),
    ("repeated ticks: StartFailover once", DOWN,
     [Tick(105.0), Tick(106.0), Tick(200.0), Tick(1e6)], HC, PC,
     replace(DOWN, failed_over=True), [StartFailover()]),
    ("back within grace: no failover (pm2 restart)", DOWN,
     [Tick(101.0), Probe(True, 102), Probe(True, 103), Tick(105.0), Tick(500.0)], HC, PC,
     InstanceHealth(ok_streak=2), UP_AGAIN),
    ("ejected: grace counts from the ejection", EJECTED, [Tick(104.0), Tick(105.0)], HC, PC,
     replace(EJECTED, failed_over=True), [StartFailover()]),
    ("ejection expiry and failover due in one tick", replace(EJECTED, fail_streak=1),
     [Tick(110.0)], HC, PC,
     InstanceHealth(status=U, fail_streak=1, ejections=1, down_since=100.0, failed_over=True),
     [StartFailover()]),
    ("each outage gets its own failover", DOWN,
     [Tick(105.0), Probe(True, 106), Probe(True, 107), Probe(False, 200), Probe(False, 201),
      Tick(205.0), Tick(206.0), Tick(207.0)], HC, PC,
     InstanceHealth(status=U, fail_streak=2, down_since=201.0, failed_over=True),
     [StartFailover(), *UP_AGAIN, MarkDown("active: 2 failed health check(s)"),
      StartFailover()]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("start", "events", "hc", "pc", "end", "actions"),
    [pytest.param(*row[1:], id=row[0]) for row in TABLE],
)
def test_transitions(
    start: InstanceHealth,
    events: list[Event],
    hc: HealthConfig,
    pc: PassiveConfig,
    end: InstanceHealth,
    actions: list[Action],
) -> None:
    got, got_actions = run(start, events, hc, pc)
    assert got == end
    assert got_actions == actions


def test_grace_zero_fails_over_on_the_first_tick() -> None:
    h, _ = on_probe(HEALTHY, False, 50.0, HC1)
    h, actions = on_tick(h, 50.0, 0.0)
    assert actions == [StartFailover()]
    assert h.failed_over


def test_status_values_match_the_admin_api() -> None:
    assert [s.value for s in Status] == ["healthy", "unhealthy", "ejected"]


def test_cheap_paths_return_the_same_object() -> None:
    assert on_passive_success(HEALTHY) is HEALTHY
    assert on_tick(HEALTHY, 1.0, GRACE)[0] is HEALTHY
    assert on_tick(DOWN, 101.0, GRACE)[0] is DOWN
    latched = replace(DOWN, failed_over=True)
    assert on_tick(latched, 999.0, GRACE)[0] is latched
    assert on_passive_failure(DOWN, 1.0, PC, ejected_count=0, total=3, connect_error=True) == (
        DOWN,
        [],
    )
    cleared = on_passive_success(InstanceHealth(passive_failures=2))
    assert cleared == HEALTHY


def test_actions_are_fresh_lists() -> None:
    """Callers may mutate what they get back without corrupting later results."""
    _, a = on_tick(HEALTHY, 1.0, GRACE)
    a.append(ProbeNow())
    assert on_tick(HEALTHY, 1.0, GRACE)[1] == []


# -- ejection_time and may_eject -------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "expected"),
    [(-1, 10.0), (0, 10.0), (1, 10.0), (2, 20.0), (3, 40.0), (4, 80.0), (5, 160.0),
     (6, 300.0), (7, 300.0), (100, 300.0), (1023, 300.0), (1024, 300.0), (1025, 300.0),
     (10**6, 300.0)],
)  # fmt: skip
def test_ejection_time_doubles_then_caps(n: int, expected: float) -> None:
    assert ejection_time(n, PC) == expected


def test_ejection_time_default_config_caps_at_five_minutes() -> None:
    pc = PassiveConfig()
    times = [ejection_time(n, pc) for n in range(1, 10)]
    assert times == [10.0, 20.0, 40.0, 80.0, 160.0, 300.0, 300.0, 300.0, 300.0]


def test_ejection_time_base_above_cap_uses_cap() -> None:
    pc = PassiveConfig(ejection_time=400.0, max_ejection_time=300.0)
    assert ejection_time(1, pc) == 300.0


@given(
    n=st.integers(min_value=-5, max_value=5000),
    base=st.floats(min_value=1e-3, max_value=1e4),
    cap=st.floats(min_value=1e-3, max_value=1e5),
)
def test_ejection_time_bounds(n: int, base: float, cap: float) -> None:
    pc = PassiveConfig(ejection_time=base, max_ejection_time=cap)
    t = ejection_time(n, pc)
    assert 0 < t <= cap
    assert t >= min(base, cap)
    assert ejection_time(n + 1, pc) >= t  # never shrinks with more ejections


@pytest.mark.parametrize(
    ("ejected", "total", "percent", "expected"),
    [
        (0, 3, 50, True), (1, 3, 50, False),       # 50 % of 3: at most one out
        (1, 3, 100, True), (2, 3, 100, False),     # 100 %: never all of them
        (0, 2, 50, True), (1, 2, 50, False), (1, 2, 100, False),
        (0, 1, 100, False),                        # the only instance is never ejected
        (0, 0, 100, False),
        (0, 3, 0, False),                          # 0 %: passive ejection disabled
        (0, 10, 10, True), (1, 10, 10, False),
        (0, 5, 10, False),                         # 10 % of 5 is half an instance: none
        (0, 4, 25, True), (1, 4, 50, True), (2, 4, 50, False),
        (-1, 3, 50, True),                         # nonsense counts are clamped
    ],
)  # fmt: skip
def test_may_eject(ejected: int, total: int, percent: int, expected: bool) -> None:
    assert may_eject(ejected, total, percent) is expected


@given(
    ejected=st.integers(min_value=0, max_value=200),
    total=st.integers(min_value=0, max_value=200),
    percent=st.integers(min_value=0, max_value=100),
)
def test_may_eject_never_exceeds_the_limit(ejected: int, total: int, percent: int) -> None:
    if may_eject(ejected, total, percent):
        assert (ejected + 1) / total <= percent / 100 + 1e-12
        assert ejected + 1 < total


def test_out_of_service_counts_everything_not_healthy() -> None:
    assert out_of_service([HEALTHY, DOWN, EJECTED, InstanceHealth(fail_streak=1)]) == 2
    assert out_of_service([]) == 0


# -- hypothesis: random event sequences on one instance -------------------------------------

DT = st.sampled_from([0.0, 0.001, 0.5, 1.0, 2.5, 4.999, 5.0, 10.0, 30.0, 301.0])

events_st = st.lists(
    st.one_of(
        st.tuples(st.just("probe"), DT, st.booleans()),
        st.tuples(st.just("fail"), DT, st.booleans(), st.integers(0, 4), st.integers(1, 5)),
        st.tuples(st.just("success"), DT),
        st.tuples(st.just("tick"), DT),
    ),
    max_size=80,
)
health_cfg_st = st.builds(
    HealthConfig,
    unhealthy_threshold=st.integers(1, 4),
    healthy_threshold=st.integers(1, 4),
)
passive_cfg_st = st.builds(
    PassiveConfig,
    consecutive_failures=st.integers(1, 4),
    ejection_time=st.sampled_from([0.5, 1.0, 10.0, 30.0]),
    max_ejection_time=st.sampled_from([10.0, 60.0, 300.0]),
    max_ejection_percent=st.sampled_from([0, 10, 34, 50, 100]),
)
GRACES = st.sampled_from([0.0, 1.0, 5.0, 30.0])


def check_invariants(h: InstanceHealth) -> None:
    assert (h.status is H) == (h.down_since is None)
    assert (h.ejected_until is not None) == (h.status is E)
    assert not (h.ok_streak > 0 and h.fail_streak > 0)
    assert h.ok_streak >= 0 and h.fail_streak >= 0 and h.ejections >= 0
    assert not (h.failed_over and h.status is H)  # the latch belongs to an outage
    assert h.passive_failures == 0 or h.status is H


def event_of(raw: tuple[object, ...], now: float) -> Event:
    kind = raw[0]
    if kind == "probe":
        return Probe(bool(raw[2]), now)
    if kind == "fail":
        ejected, total = int(raw[3]), int(raw[4])  # type: ignore[call-overload]
        return Fail(now, connect=bool(raw[2]), ejected=ejected, total=total)
    if kind == "success":
        return Success()
    return Tick(now)


@PROPS
@given(events=events_st, hc=health_cfg_st, pc=passive_cfg_st, grace=GRACES)
def test_invariants_hold_for_any_sequence(
    events: list[tuple[object, ...]],
    hc: HealthConfig,
    pc: PassiveConfig,
    grace: float,
) -> None:
    h = InstanceHealth()
    now = 0.0
    failovers_this_outage = 0
    for raw in events:
        now += float(raw[1])  # type: ignore[arg-type]
        ev = event_of(raw, now)
        before = h
        h, actions = step(h, ev, hc, pc, grace)
        check_invariants(h)
        kinds = [type(a) for a in actions]

        # MarkDown exactly when leaving HEALTHY; MarkUp (+ Rediscover) exactly when returning.
        went_down = before.status is H and h.status is not H
        came_up = before.status is not H and h.status is H
        assert (MarkDown in kinds) == went_down
        assert (MarkUp in kinds) == came_up
        assert (Rediscover in kinds) == came_up
        if went_down:
            assert h.down_since == now
        if came_up:
            assert h.ejected_until is None and not h.failed_over
            failovers_this_outage = 0
        elif before.status is not H:
            assert h.down_since == before.down_since  # one outage, one start time

        # Ejections: only from HEALTHY, on a passive failure, within the configured bounds.
        ejects = [a for a in actions if isinstance(a, Eject)]
        if ejects:
            assert isinstance(ev, Fail) and before.status is H and h.status is E
            assert may_eject(ev.ejected, ev.total, pc.max_ejection_percent)
            assert h.ejections == before.ejections + 1
            (ej,) = ejects
            assert ej.until == h.ejected_until
            # until = now + length: compare with the float sum, not the difference
            assert now < ej.until <= now + pc.max_ejection_time
        else:
            assert h.ejections == before.ejections
        if isinstance(ev, Fail) and ev.connect and before.status is H:
            assert ProbeNow in kinds

        # StartFailover: only after grace, at most once per outage.
        if StartFailover in kinds:
            assert kinds.count(StartFailover) == 1
            assert isinstance(ev, Tick) and h.status is not H
            assert h.down_since is not None and now - h.down_since >= grace
            failovers_this_outage += 1
        assert failovers_this_outage <= 1
        assert h.failed_over == (failovers_this_outage == 1)

        # A tick that is past due never leaves work undone: ticking again at once is idle.
        if isinstance(ev, Tick):
            again, more = on_tick(h, now, grace)
            assert again is h and more == []


@PROPS
@given(events=events_st, hc=health_cfg_st, pc=passive_cfg_st, grace=GRACES)
def test_a_recovered_instance_is_never_failed_over_late(
    events: list[tuple[object, ...]],
    hc: HealthConfig,
    pc: PassiveConfig,
    grace: float,
) -> None:
    """StartFailover is only ever emitted for an outage that has lasted ``grace`` *so far*:
    an instance that came back before that (the pm2-restart case) never triggers it."""
    h = InstanceHealth()
    now = 0.0
    for raw in events:
        now += float(raw[1])  # type: ignore[arg-type]
        prev_down = h.down_since
        h, actions = step(h, event_of(raw, now), hc, pc, grace)
        if StartFailover() in actions:
            start = h.down_since
            assert start is not None
            assert prev_down is None or prev_down == start
            assert now - start >= grace


# -- hypothesis: a fleet sharing the ejection budget ----------------------------------------


@PROPS
@given(
    n=st.integers(1, 6),
    percent=st.sampled_from([0, 10, 33, 34, 50, 67, 100]),
    steps=st.lists(
        st.tuples(
            st.integers(0, 5),
            st.sampled_from(["fail", "connect", "ok", "bad", "success", "tick"]),
            DT,
        ),
        max_size=120,
    ),
)
def test_fleet_never_ejects_past_the_budget(
    n: int, percent: int, steps: list[tuple[int, str, float]]
) -> None:
    """With ``ejected_count = out_of_service(others)``, passive ejection never takes more
    than ``max_ejection_percent`` of the fleet out, and never the last instance in service."""
    pc = replace(PC, consecutive_failures=1, max_ejection_percent=percent)
    fleet = [InstanceHealth() for _ in range(n)]
    limit = percent * n // 100
    now = 0.0
    for idx, kind, dt in steps:
        now += dt
        i = idx % n
        h = fleet[i]
        if kind in ("fail", "connect"):
            others = out_of_service(fleet[:i] + fleet[i + 1 :])
            new, actions = on_passive_failure(
                h, now, pc, ejected_count=others, total=n, connect_error=kind == "connect"
            )
            if any(isinstance(a, Eject) for a in actions):
                assert others + 1 <= limit
                assert others + 1 < n  # someone is left to serve
        elif kind in ("ok", "bad"):
            new, _ = on_probe(h, kind == "ok", now, HC)
        elif kind == "success":
            new = on_passive_success(h)
        else:
            new, _ = on_tick(h, now, GRACE)
        fleet[i] = new
        assert sum(1 for x in fleet if x.status is E) <= limit
        check_invariants(new)


def test_fleet_of_three_at_fifty_percent_ejects_one() -> None:
    """The documented example: 50 % of 3 instances, all failing: exactly one is ejected."""
    pc = replace(PC, consecutive_failures=1, max_ejection_percent=50)
    fleet = [InstanceHealth() for _ in range(3)]
    for _ in range(5):
        for i in range(3):
            others = out_of_service(fleet[:i] + fleet[i + 1 :])
            fleet[i], _ = on_passive_failure(
                fleet[i], 1.0, pc, ejected_count=others, total=3, connect_error=False
            )
    assert [h.status for h in fleet] == [E, H, H]


def test_fleet_at_hundred_percent_keeps_one_in_service() -> None:
    pc = replace(PC, consecutive_failures=1, max_ejection_percent=100)
    fleet = [InstanceHealth() for _ in range(3)]
    for i in range(3):
        others = out_of_service(fleet[:i] + fleet[i + 1 :])
        fleet[i], _ = on_passive_failure(
            fleet[i], 1.0, pc, ejected_count=others, total=3, connect_error=False
        )
    assert [h.status for h in fleet] == [E, E, H]


def test_active_outage_counts_against_the_ejection_budget() -> None:
    """One instance crashed (UNHEALTHY by active checks); its sessions load the survivors.
    Failing requests there must not eject a survivor at 50 %: that would cascade."""
    crashed, _ = on_probe(InstanceHealth(), False, 1.0, HC1)
    fleet = [crashed, InstanceHealth(passive_failures=2), InstanceHealth()]
    others = out_of_service([fleet[0], fleet[2]])
    h, actions = on_passive_failure(
        fleet[1], 2.0, PC, ejected_count=others, total=3, connect_error=False
    )
    assert h.status is H and actions == [ProbeNow()]
