"""The command line as users run it: real subprocesses."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests.procs import PY, ROOT, free_port

pytestmark = pytest.mark.system  # real processes (see tests/conftest.py: layers)

BROKEN = """
listen: {host: 127.0.0.1, port: 8080, bogus_key: 1}
health: {interval: 5 parsecs}
sessions:
  rules:
    - {path: '^/v1/(?P<session>[^/]+'}
instances:
  - {name: node-1, url: "http://127.0.0.1:3001", api_key: "super-secret-key"}
  - {name: node-1, url: "http://127.0.0.1:3002"}
"""


def test_check_config_lists_every_problem(tmp_path: Path) -> None:
    cfg = tmp_path / "broken.yaml"
    cfg.write_text(BROKEN)
    out = subprocess.run(
        [PY, "-m", "router", "check-config", str(cfg)], capture_output=True, text=True, cwd=ROOT
    )
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    joined = "\n".join(lines)
    assert any(line.startswith("listen.bogus_key:") for line in lines), joined
    assert any(line.startswith("health.interval:") for line in lines), joined
    assert any(line.startswith("instances[1].name:") for line in lines), joined
    assert any(line.startswith("sessions.rules[0].path:") for line in lines), joined
    assert "super-secret-key" not in out.stderr + out.stdout


def test_check_config_ok_for_shipped_configs() -> None:
    for name in ("example.yaml", "demo.yaml"):
        out = subprocess.run(
            [PY, "-m", "router", "check-config", str(ROOT / "config" / name)],
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
        assert out.returncode == 0, out.stderr
        assert "config OK" in out.stdout


def _consecutive_free_ports(n: int) -> int:
    for _ in range(50):
        base = free_port()
        if base + n >= 65535:
            continue
        socks: list[socket.socket] = []
        try:
            for p in range(base, base + n):
                s = socket.socket()
                socks.append(s)
                # Servers bind with SO_REUSEADDR too: a TIME_WAIT port is usable for them.
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(("127.0.0.1", p))
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
        return base
    raise RuntimeError("no free port range")


@pytest.mark.timeout(60)
def test_demo_runs_routes_and_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    port, admin, sims = free_port(), free_port(), _consecutive_free_ports(3)
    log = tmp_path / "demo.log"
    proc = subprocess.Popen(
        [PY, "-m", "router", "demo", "--port", str(port), "--admin-port", str(admin),
         "--sim-port", str(sims)],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )
    try:
        deadline = time.monotonic() + 40
        while "wa-router demo is running" not in log.read_text():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        text = log.read_text()
        assert f"http://127.0.0.1:{port}" in text and "curl" in text
        assert f"http://127.0.0.1:{admin}/dashboard#token=" in text
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/sessions") as r:
            names = {s["name"] for s in json.load(r)}
            assert {"alice", "bob"} <= names
        req = urllib.request.Request(f"http://127.0.0.1:{port}/api/sessions/alice")
        with urllib.request.urlopen(req) as r:
            assert r.headers["X-Router-Instance"].startswith("node-")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # The simulators went with it: nothing listens on their ports any more.
    for p in range(sims, sims + 3):
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", p)) != 0, f"simulator on {p} still running"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("with_redis", [False, True])
def test_start_failure_exits_cleanly(tmp_path: Path, with_redis: bool, request: pytest.FixtureRequest) -> None:
    """The admin port is taken: the router says so and exits 1, and nothing it started
    first (store, relay, proxy port) keeps it alive."""
    store = ""
    if with_redis:
        redis = request.getfixturevalue("redis_server")
        store = f"store: {{url: '{redis.url}'}}\n"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        admin = busy.getsockname()[1]
        cfg = tmp_path / "c.yaml"
        cfg.write_text(
            f"listen: {{host: 127.0.0.1, port: {free_port()}}}\n"
            f"admin: {{host: 127.0.0.1, port: {admin}}}\n" + store
            + "webhooks: {targets: [{url: 'http://127.0.0.1:9/hook'}]}\n"
            "instances: [{name: n1, url: 'http://127.0.0.1:9'}]\n"
        )
        out = subprocess.run([PY, "-m", "router", "run", "-c", str(cfg)], capture_output=True,
                             text=True, cwd=ROOT, timeout=30)
    assert out.returncode == 1, out.stderr[-2000:]
    assert "address" in out.stderr.lower() or "in use" in out.stderr.lower(), out.stderr[-2000:]
