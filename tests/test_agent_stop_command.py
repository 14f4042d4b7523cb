"""The agent beside an Evolution API server (issue 19): no call ends one instance and keeps
its auth, so the agent fences by running ``agent.stop_command`` and counts the fence done
once the server refuses connections. A real sim process (``--flavor evolution``, key set)
is the server; the command is a real ``kill``."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest
from redis.asyncio import Redis

from router.agent.run import Agent
from router.config import parse_config
from tests.flavors import EVOLUTION
from tests.procs import Proc


def agent_for(sim: Proc, command: str) -> Agent:
    config = parse_config(
        f"profile: evolution\nagent: {{instance: {sim.name}, url: '{sim.url}', "
        f"api_key: {EVOLUTION.key}, stop_command: {command}}}\n", agent=True)
    # Never connected: stop_everything only talks to the instance.
    return Agent(config, Redis(host="127.0.0.1", port=1))


async def start(sim: Proc, names: list[str]) -> None:
    async with aiohttp.ClientSession() as http:
        for name in names:
            status, text = await EVOLUTION.create(http, sim.url, name, aiohttp.ClientTimeout(total=5),
                                                  direct=True)
            assert status == 201, text


@pytest.mark.timeout(30)
async def test_the_agent_stops_the_server_with_its_command_and_keeps_the_auth(
    tmp_path: Path, sim_factory: Callable[..., Proc]
) -> None:
    state = tmp_path / "evo-1.json"
    sim = sim_factory("evo-1", "--state-file", str(state), flavor=EVOLUTION)
    await start(sim, ["e1", "e2"])
    agent = agent_for(sim, f"[kill, '-TERM', '{sim.proc.pid}']")
    assert await agent.stop_everything("test fence")
    assert sim.proc.wait(5) == 0 and agent.stopped_total == 2
    # Ended with its process, never logged out: both instances are still stored.
    assert set(json.loads(state.read_text())["sessions"]) == {"e1", "e2"}
    assert await agent.stop_everything("again")  # nothing runs any more: no second kill


@pytest.mark.timeout(30)
async def test_a_failing_or_missing_command_does_not_count_as_a_fence(
    sim_factory: Callable[..., Proc], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("router.agent.run.STOP_COMMAND_TIMEOUT", 1.0)
    sim = sim_factory("evo-2", flavor=EVOLUTION)
    await start(sim, ["f1"])
    assert not await agent_for(sim, "[/bin/false]").stop_everything("test")
    assert not await agent_for(sim, "[/nonexistent/stop-it]").stop_everything("test")
    # Exits 0, but the server still answers after the wait: not fenced.
    assert not await agent_for(sim, "[/bin/true]").stop_everything("test")
    assert not await agent_for(sim, "[sleep, '5']").stop_everything("test")  # ran over: killed
    agent = agent_for(sim, "[/bin/true]")
    agent.cfg = dataclasses.replace(agent.cfg, stop_command=())  # as if edited under it
    assert not await agent.stop_everything("test")
    assert sim.proc.poll() is None  # still serving: the leader keeps waiting for the lease
