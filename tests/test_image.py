"""The container image, built and run: scripts/image builds it on a Debian base made with
debootstrap (no image registry is reachable here) and buildah runs its filesystem and
command (podman run cannot set rlimits on this machine kind; see README, Docker)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from router import build
from tests.procs import ROOT, Proc, free_port, wait_http

TOOLS = ("podman", "buildah", "debootstrap")
MISSING = [t for t in TOOLS if shutil.which(t) is None]
IMAGE = "localhost/wa-router:test"

pytestmark = [
    pytest.mark.system,
    pytest.mark.skipif(bool(MISSING), reason=f"needs {', '.join(MISSING)} (apt-get install podman buildah debootstrap; .ci/run installs them)"),
    pytest.mark.skipif(os.geteuid() != 0, reason="buildah's chroot isolation needs root"),
    pytest.mark.timeout(900),
]


@pytest.fixture(scope="module")
def image() -> str:
    r = subprocess.run(
        # This venv's Python builds the wa-router wheel: compiled, as the tests run it.
        [str(ROOT / "scripts" / "image")], cwd=ROOT,
        env={**os.environ, "IMAGE": IMAGE, "PYTHON": sys.executable},
        capture_output=True, text=True, timeout=840,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return IMAGE


@pytest.fixture
def container(image: str) -> Iterator[str]:
    ctr = subprocess.run(["buildah", "from", image], capture_output=True, text=True, check=True,
                         timeout=120).stdout.strip()
    try:
        yield ctr
    finally:
        subprocess.run(["buildah", "rm", ctr], capture_output=True, timeout=60)


def _router_pid(parent: int, timeout: float = 15.0) -> int:
    """The router's own process under `buildah run` (what `docker stop` would signal)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for status in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                cmd = status.read_bytes().split(b"\0")
            except OSError:
                continue
            if b"/opt/wa-router/bin/wa-router" in cmd and cmd[0].endswith(b"python3"):
                pid = int(status.parent.name)
                if _descends_from(pid, parent):
                    return pid
        time.sleep(0.05)
    raise TimeoutError("router process not found in the container")


def _descends_from(pid: int, ancestor: int) -> bool:
    while pid > 1:
        if pid == ancestor:
            return True
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        pid = int(stat.rsplit(")", 1)[1].split()[1])
    return False


def test_image_serves_routes_and_stops_on_sigterm(
    container: str, tmp_path: Path, sim_factory: Callable[..., Proc]
) -> None:
    sim: Proc = sim_factory("node-1")
    port, admin = free_port(), free_port()
    (tmp_path / "config.yaml").write_text(
        f"listen: {{host: 127.0.0.1, port: {port}, shutdown_timeout: 3s}}\n"
        f"admin: {{host: 127.0.0.1, port: {admin}}}\n"
        f"instances:\n  - {{name: node-1, url: '{sim.url}'}}\n"
    )
    os.chmod(tmp_path, 0o755)
    log = (tmp_path / "router.log").open("wb")
    run = subprocess.Popen(
        ["buildah", "run", "--isolation", "chroot", "-v", f"{tmp_path}:/cfg:ro", container,
         "--", "wa-router", "run", "-c", "/cfg/config.yaml"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", timeout=60, proc=run)
        req = urllib.request.Request(f"http://127.0.0.1:{port}/api/sessions/s1/chats",
                                     headers={"X-Request-Id": "img-1"})
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.status == 200
            assert r.headers["X-Router-Instance"] == "node-1"
            assert b'"path": "/api/sessions/s1/chats"' in r.read()
        pid = _router_pid(run.pid)
        assert Path(f"/proc/{pid}/status").read_text().count("10001") >= 2  # runs as uid 10001
        t0 = time.monotonic()
        os.kill(pid, signal.SIGTERM)
        assert run.wait(timeout=10) == 0, (tmp_path / "router.log").read_text()
        took = time.monotonic() - t0
        assert took < 3.0, f"stopped after {took:.2f}s, shutdown_timeout is 3s"
        # The image carries the build this checkout runs: compiled where it could be built.
        mode = "compiled (mypyc)" if build.mode() == "compiled" else "pure Python"
        started = (tmp_path / "router.log").read_text()
        assert f"data path {mode}" in started, started[-2000:]
        print(f"\nimage: routed through the container (data path {mode}); SIGTERM -> exit 0 "
              f"in {took:.2f}s")
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
        log.close()
