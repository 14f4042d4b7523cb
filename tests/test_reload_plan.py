"""router.reload.plan_reload: what a new config changes, and what it may not (tables)."""

from __future__ import annotations

import pytest

from router.config import parse_config
from router.config.model import Config
from router.reload import FIXED, plan_reload

BASE = """
listen: {host: 127.0.0.1, port: 8080}
admin: {host: 127.0.0.1, port: 8081}
instances:
  - {name: a, url: 'http://127.0.0.1:3001'}
  - {name: b, url: 'http://127.0.0.1:3002'}
"""


def cfg(text: str = BASE) -> Config:
    return parse_config(text)


def test_the_same_file_changes_nothing() -> None:
    plan = plan_reload(cfg(), cfg())
    assert plan.unchanged and not plan.problems and plan.summary() == []


@pytest.mark.parametrize(
    ("extra", "sections"),
    [
        ("health: {interval: 3s}", ("health",)),
        ("failover: {grace: 9s}\npassive: {ejection_time: 1s}", ("passive", "failover")),
        ("sessions: {unscoped: reject}", ("sessions",)),
        ("metrics: {enabled: false}", ("metrics",)),
    ],
)
def test_changed_sections_are_listed(extra: str, sections: tuple[str, ...]) -> None:
    plan = plan_reload(cfg(), cfg(BASE + extra))
    assert set(plan.sections) == set(sections) and not plan.problems
    assert [f"{s} changed" for s in plan.sections] == plan.summary()


def test_instances_added_removed_and_changed() -> None:
    new = BASE.replace("  - {name: a, url: 'http://127.0.0.1:3001'}\n", "") \
        .replace("3002'}", "3012'}") + "  - {name: c, url: 'http://127.0.0.1:3003'}\n"
    plan = plan_reload(cfg(), cfg(new))
    assert (plan.added, plan.removed, plan.changed) == (("c",), ("a",), ("b",))
    assert plan.summary() == ["instance c added", "instance a removed (drained first)",
                              "instance b changed"]


@pytest.mark.parametrize(
    ("old", "new", "key"),
    [
        ("port: 8080", "port: 9090", "listen.port"),
        ("port: 8081", "port: 9091", "admin.port"),
        ("listen: {host: 127.0.0.1,", "listen: {host: 127.0.0.2,", "listen.host"),
    ],
)
def test_what_needs_a_restart_is_refused_with_the_key(old: str, new: str, key: str) -> None:
    plan = plan_reload(cfg(), cfg(BASE.replace(old, new)))
    assert len(plan.problems) == 1 and plan.problems[0].startswith(f"{key}: cannot change on reload")


def test_every_fixed_key_exists_on_the_config() -> None:
    c = cfg()
    for key, _ in FIXED:
        value: object = c
        for part in key.split("."):
            value = getattr(value, part)


def test_store_and_workers_need_a_restart_and_every_problem_is_reported() -> None:
    new = BASE + "store: {url: 'redis://127.0.0.1:6379/0', prefix: 'x:'}\n"
    new = new.replace("port: 8080}", "port: 8080, workers: 2}")
    plan = plan_reload(cfg(), cfg(new))
    assert {p.split(":")[0] for p in plan.problems} == {"listen.workers", "store.url", "store.prefix"}
