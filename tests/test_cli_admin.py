"""The admin commands of the CLI (``wa-router instances``, ``drain``, ...) against a live
router: real processes, the token and address read from the router's own config file."""

from __future__ import annotations

import subprocess
from collections.abc import Callable

import aiohttp
import pytest

from tests.procs import PY, ROOT, Proc, RouterProc, free_port
from tests.test_operate import TOKEN, config, create_sessions

pytestmark = pytest.mark.system  # real processes (see tests/conftest.py: layers)


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PY, "-m", "router", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=90, env=env)


async def test_admin_commands_from_the_config_file(
    three_sims: list[Proc], router_factory: Callable[..., RouterProc]
) -> None:
    r = router_factory(config(three_sims))
    cfg = str(r.config_path)
    async with aiohttp.ClientSession() as http:
        await create_sessions(http, r, [f"c{i}" for i in range(12)])

    out = cli("instances", "-c", cfg)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split()[:3] == ["NAME", "STATE", "SESSIONS"]
    assert sorted(ln.split()[0] for ln in lines[1:]) == ["node-1", "node-2", "node-3"]
    assert TOKEN not in out.stdout + out.stderr

    out = cli("sessions", "node-1", "-c", cfg, "--json")
    assert out.returncode == 0
    on_one = [line for line in out.stdout.splitlines() if '"session"' in line]
    out = cli("drain", "node-1", "--wait", "60", "-c", cfg)
    assert out.returncode == 0, out.stderr
    assert '"drained": true' in out.stdout and '"sessions": 0' in out.stdout
    assert len(on_one) > 0
    out = cli("session", "c0", "-c", cfg)
    assert out.returncode == 0 and '"instance": "node-1"' not in out.stdout

    out = cli("undrain", "node-1", "-c", cfg)
    assert out.returncode == 0 and '"state": "healthy"' in out.stdout
    out = cli("rebalance", "-c", cfg)
    assert out.returncode == 0 and out.stdout.startswith("would move ")
    out = cli("reload", "-c", cfg)
    assert out.returncode == 0 and out.stdout.strip() == "reloaded: no change"
    out = cli("events", "-c", cfg, "--limit", "5")
    assert out.returncode == 0 and "instance_undrained" in out.stdout

    # Refusals: the router's error, exit 1; unreachable: exit 3.
    out = cli("drain", "ghost", "-c", cfg)
    assert out.returncode == 1 and "404 not_found" in out.stderr
    out = cli("instances", "--admin", r.admin_url, "--token", "wrong")
    assert out.returncode == 1 and "401 unauthorized" in out.stderr
    out = cli("instances", "--admin", f"http://127.0.0.1:{free_port()}")
    assert out.returncode == 3 and "cannot reach the admin API" in out.stderr
    good = r.config_path.read_text()
    r.config_path.write_text(good + "bogus: 1\n")
    out = cli("reload", "--admin", r.admin_url, "--token", TOKEN)
    assert out.returncode == 1 and "bogus: unknown key" in out.stderr
