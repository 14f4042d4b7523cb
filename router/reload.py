"""Hot config reload: what a new config changes, decided without I/O.

``plan_reload(old, new)`` compares two validated configs and returns a ``ReloadPlan``: the
instances added, removed and changed, the sections that changed, and the changes a running
process cannot take (``problems``: the listening addresses, the worker count and the store,
which need a restart). The app applies a plan without problems in one step; a plan with
problems is refused whole, so the running config is always exactly one file's content.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

from router.config.model import Config, InstanceConfig

# (dotted key, what it needs): changing these needs a restart.
FIXED: tuple[tuple[str, str], ...] = (
    ("listen.host", "the proxy port's socket"),
    ("listen.port", "the proxy port's socket"),
    ("listen.workers", "the worker processes"),
    ("listen.idempotency_keys", "the proxy's key store"),
    ("admin.host", "the admin port's socket"),
    ("admin.port", "the admin port's socket"),
    ("store.url", "the store connections"),
    ("store.prefix", "the store's keys"),
)


@dataclass(frozen=True, slots=True)
class ReloadPlan:
    problems: tuple[str, ...] = ()
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()  # instances whose url, key, weight or limit changed
    sections: tuple[str, ...] = ()  # top-level keys whose value changed

    @property
    def unchanged(self) -> bool:
        return not (self.added or self.removed or self.changed or self.sections)

    def summary(self) -> list[str]:
        out = [f"instance {n} added" for n in self.added]
        out += [f"instance {n} removed (drained first)" for n in self.removed]
        out += [f"instance {n} changed" for n in self.changed]
        out += [f"{s} changed" for s in self.sections if s != "instances"]
        return out


def _get(config: Config, dotted: str) -> object:
    value: object = config
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def plan_reload(old: Config, new: Config) -> ReloadPlan:
    problems = [
        f"{key}: cannot change on reload ({what}); restart the router to apply it"
        for key, what in FIXED
        if _get(old, key) != _get(new, key)
    ]
    before: dict[str, InstanceConfig] = {i.name: i for i in old.instances}
    after: dict[str, InstanceConfig] = {i.name: i for i in new.instances}
    sections = tuple(
        f.name for f in dataclasses.fields(Config)
        if f.name != "source" and getattr(old, f.name) != getattr(new, f.name)
    )  # fmt: skip
    return ReloadPlan(
        problems=tuple(problems),
        added=tuple(n for n in after if n not in before),
        removed=tuple(n for n in before if n not in after),
        changed=tuple(n for n in after if n in before and before[n] != after[n]),
        sections=sections,
    )


@dataclass(slots=True)
class Reloads:
    """Reload outcomes, for ``router_config_reloads_total{result}`` and the admin API."""

    success: int = 0
    error: int = 0
    last_result: str | None = None
    last_at: float | None = None  # wall clock
    last_problems: tuple[str, ...] = ()

    def record(self, ok: bool, problems: tuple[str, ...] = ()) -> None:
        if ok:
            self.success += 1
        else:
            self.error += 1
        self.last_result = "success" if ok else "error"
        self.last_at = time.time()
        self.last_problems = problems
