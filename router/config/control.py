"""The ``failover`` section: how the router talks to instances about sessions (restore,
stop, status, list), with each profile's defaults as the base a file's keys replace."""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Any, Final

from router.config import fields as f
from router.config.model import Config, FailoverConfig, InstanceCall, ListCall, StatusCall

_POSITIVE: Final = f.duration()
# A dotted path into a JSON answer: ``instance.state``; "" (lists only): the answer itself.
_FIELD: Final = f.text(pattern=r"[^.\s]+(\.[^.\s]+)*",
                       what="must be a dotted field path like instance.state")
_VALUES: Final = f.list_of(f.text(), make=frozenset)
_WAHA_STOP: Final = FailoverConfig().stop


def _items_path(value: Any, at: f.At) -> str:
    return "" if value in ("", None) else str(_FIELD(value, at))


def _call(base: InstanceCall, *, session: bool) -> f.Converter:
    """A request to an instance; keys left out keep ``base``'s values."""
    table = {"method": f.method, "path": f.url_path(session=session)}
    return f.section(partial(dataclasses.replace, base), table)


def _stop(base: InstanceCall | None) -> f.Converter:
    """``none`` (the instances cannot end one copy and keep its auth), or a call."""
    call = _call(base or _WAHA_STOP or InstanceCall("POST", "/"), session=True)

    def conv(value: Any, at: f.At) -> InstanceCall | None:
        if isinstance(value, str) and value.lower() == "none":
            return None
        if base is None and isinstance(value, dict) and not {"method", "path"} <= value.keys():
            raise f.Invalid("give both method and path (this profile has no stop call "
                            "to start from), or none")
        result: InstanceCall | None = call(value, at)
        return result

    return conv


def _status(base: StatusCall) -> f.Converter:
    return f.section(partial(dataclasses.replace, base), {
        "method": f.method,
        "path": f.url_path(session=True),
        "field": _FIELD,
        "ready": f.list_of(f.text(), make=frozenset, non_empty=True),
        "failed": _VALUES,
    }, check=_check_status)


def _list(base: ListCall) -> f.Converter:
    return f.section(partial(dataclasses.replace, base), {
        "method": f.method,
        "path": f.url_path(),
        "items": _items_path,
        "name": _FIELD,
        "state": _FIELD,
        "stopped": _VALUES,
        "confirm": f.boolean,
    })


def _check_status(status: StatusCall, at: f.At) -> None:
    both = status.ready & status.failed
    if at.clean("ready", "failed") and both:
        at.key("failed").add(f"a value can't mean both ready and failed: {', '.join(sorted(both))}")


def failover_section(base: FailoverConfig) -> f.Converter:
    """The ``failover`` section on top of a profile's defaults."""
    return f.section(partial(dataclasses.replace, base), {
        "grace": f.duration(zero_ok=True),  # 0: fail over as soon as it is down
        "hold_timeout": _POSITIVE,
        "restore_concurrency": f.integer(1),
        "restore": _call(base.restore, session=True),
        "stop": _stop(base.stop),
        "status": _status(base.status),
        "list": _list(base.list),
        "max_held_requests": f.integer(1),
        "restore_timeout": _POSITIVE,
        "restore_attempts": f.integer(1),
        "leader_ttl": _POSITIVE,
        "agent_memory": _POSITIVE,
    })


def check_agent_stop(config: Config, at: f.At) -> None:
    """An agent fences by stopping sessions: without a stop call it needs a command."""
    agent = config.agent
    if (agent is not None and config.failover.stop is None and not agent.stop_command
            and at.clean("failover.stop", "agent.stop_command")):
        at.key("agent.stop_command").add(
            "required when failover.stop is none (e.g. profile evolution: no call ends a copy "
            "without logging it out): the command that stops the instance, such as "
            "[docker, stop, evolution-1]")
