"""``InstanceApi`` reading answers as each profile's control plane says (issue 19): the state
field, the list's items, name and state, and Evolution API's confirmation of listed rows.
A scripted transport answers by (method, path); no sockets, no event loop beyond the test's."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pytest

from router.config import parse_config
from router.config.holder import ConfigHolder
from router.errors import UpstreamConnectError
from router.instance_api import NOT_FOUND, InstanceApi, dig
from router.instances import Instance
from router.transport import Response

ONE = "instances: [{name: n1, url: 'http://127.0.0.1:3001', api_key: k1}]\n"


class Scripted:
    """Answers ``(method, path) -> (status, body)``; an unscripted call: connection refused."""

    def __init__(self, answers: Mapping[tuple[str, str], tuple[int, Any]]) -> None:
        self.answers = dict(answers)
        self.calls: list[tuple[str, str, dict[str, str]]] = []

    async def request(self, method: str, url: str, body: bytes = b"",
                      headers: Mapping[str, str] | None = None, *, timeout: float,
                      max_body: int = 0, once: bool = False) -> Response:
        path = url.removeprefix("http://127.0.0.1:3001")
        self.calls.append((method, path, dict(headers or {})))
        if (method, path) not in self.answers:
            raise UpstreamConnectError("connection refused")
        status, data = self.answers[(method, path)]
        return Response(status, data if isinstance(data, bytes) else json.dumps(data).encode())

    def forget(self, origin: str) -> None:
        pass

    def close(self) -> None:
        pass


def api(profile: str, answers: Mapping[tuple[str, str], tuple[int, Any]],
        extra: str = "") -> tuple[InstanceApi, Scripted, Instance]:
    config = parse_config(f"profile: {profile}\n" + ONE + extra)
    transport = Scripted(answers)
    return InstanceApi(transport, ConfigHolder(config)), transport, Instance(config.instances[0],
                                                                           metrics=False)


@pytest.mark.parametrize(("data", "path", "value"), [
    ({"instance": {"state": "open"}}, "instance.state", "open"),
    ({"instance": {}}, "instance.state", None),
    ({"instance": "x"}, "instance.state", None),
    ([1, 2], "", [1, 2]),
    ({"status": "WORKING"}, "status", "WORKING"),
])
def test_dig(data: Any, path: str, value: Any) -> None:
    assert dig(data, path) == value


STATE = "/instance/connectionState/s1"


@pytest.mark.parametrize(("answer", "status"), [
    ((200, {"instance": {"instanceName": "s1", "state": "open"}}), "open"),
    ((200, {"instance": {"instanceName": "s1", "state": "connecting"}}), "connecting"),
    # Known to the database, not loaded on this server: no state at all.
    ((200, {"instance": {"instanceName": "s1"}}), NOT_FOUND),
    ((404, {"status": 404, "error": "Not Found"}), NOT_FOUND),
    ((500, {}), None),
    ((200, b"<html>"), None),
    ((200, {"instance": {"state": 3}}), None),
])
async def test_evolution_status_reads_instance_state(answer: tuple[int, Any], status: str | None) -> None:
    a, transport, inst = api("evolution", {("GET", STATE): answer})
    assert await a.status(inst, "s1") == status
    assert a.is_ready(status) is (status == "open")
    method, path, headers = transport.calls[0]
    assert (method, path) == ("GET", STATE)
    assert headers["apikey"] == headers["X-Api-Key"] == "k1"  # both, on every call


async def test_evolution_list_is_confirmed_instance_by_instance() -> None:
    rows = [
        {"name": "live", "connectionStatus": "open"},
        {"name": "elsewhere", "connectionStatus": "open"},  # another server's row, stale status
        {"name": "closed", "connectionStatus": "close"},
        {"name": "bad id!", "connectionStatus": "open"},
        {"name": "conn", "connectionStatus": "connecting"},
        "junk",
    ]
    answers = {
        ("GET", "/instance/fetchInstances"): (200, rows),
        ("GET", "/instance/connectionState/live"): (200, {"instance": {"state": "open"}}),
        ("GET", "/instance/connectionState/elsewhere"): (200, {"instance": {"instanceName": "x"}}),
        ("GET", "/instance/connectionState/conn"): (200, {"instance": {"state": "connecting"}}),
    }
    a, transport, inst = api("evolution", answers)
    assert await a.running(inst) == ["live", "conn"]
    asked = {p for _, p, _ in transport.calls}
    assert "/instance/connectionState/closed" not in asked  # closed rows are not asked about
    # One answer unknown: the list cannot be trusted (a copy may run there).
    del answers[("GET", "/instance/connectionState/conn")]
    a, _, inst = api("evolution", answers)
    assert await a.running(inst) is None


@pytest.mark.parametrize(("extra", "answer", "running"), [
    # WAHA: the array itself, name and status, STOPPED and FAILED left out.
    ("", (200, [{"name": "a", "status": "WORKING"}, {"name": "b", "status": "STOPPED"},
                {"name": "c", "status": "FAILED"}, {"name": "d", "status": "STARTING"}]), ["a", "d"]),
    # An in-house gateway: {"data": {"sessions": [{"id", "info": {"state"}}]}}.
    ("failover: {list: {path: /v1/s, items: data.sessions, name: id, state: info.state, "
     "stopped: [down]}}",
     (200, {"data": {"sessions": [{"id": "x", "info": {"state": "up"}},
                                  {"id": "y", "info": {"state": "down"}}, {"id": 7}]}}), ["x"]),
    ("", (200, {"not": "a list"}), None),
    ("", (503, []), None),
])
async def test_list_fields_as_configured(extra: str, answer: tuple[int, Any],
                                         running: list[str] | None) -> None:
    path = "/v1/s" if "/v1/s" in extra else "/api/sessions?all=true"
    a, _, inst = api("waha", {("GET", path): answer}, extra)
    assert await a.running(inst) == running


async def test_without_a_stop_call_nothing_is_stopped() -> None:
    a, transport, inst = api("evolution", {})
    assert not a.can_stop
    with pytest.raises(LookupError):
        await a.stop(inst, "s1")
    assert transport.calls == []  # and no logout, no delete instead
    waha, _, _ = api("waha", {})
    assert waha.can_stop
    assert a.is_failed("refused") and not a.is_failed("close") and waha.is_failed("FAILED")
