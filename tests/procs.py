"""Real processes for integration tests: simulators and routers on loopback free ports."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

# The benchmarks' free ports, config writer and /proc readers: one of each for both.
from bench.lib import REPO
from bench.lib.configs import router_yaml
from bench.lib.cpu import rss_kib as rss_kib
from bench.lib.ports import free_port as free_port
from tests.flavors import WAHA, Flavor

PY = sys.executable
ROOT = REPO  # processes run in the repo root: this checkout's router/


def wait_http(url: str, timeout: float = 15.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Poll until ``url`` answers 2xx (bounded)."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} was ready")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if 200 <= r.status < 300:
                    return
        except (urllib.error.URLError, OSError) as e:
            last = e
        time.sleep(0.05)
    raise TimeoutError(f"{url} not ready: {last}")


@dataclass
class Proc:
    proc: subprocess.Popen[bytes]
    port: int
    name: str = ""
    log: Path | None = None
    flavor: Flavor = WAHA  # the API a sim speaks (tests.flavors)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log else ""


def start_sim(
    tmp: Path, name: str, port: int | None = None, *extra: str, flavor: Flavor = WAHA
) -> Proc:
    port = port or free_port()
    log = tmp / f"sim-{name}-{port}.log"
    proc = subprocess.Popen(
        [PY, "-m", "router", "sim", "--host", "127.0.0.1", "--port", str(port), "--name", name,
         *flavor.sim_args(), *extra],
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )
    p = Proc(proc, port, name, log, flavor)
    try:
        wait_http(p.url + flavor.ready_path, proc=proc)
    except Exception:
        p.stop()
        raise
    return p


@dataclass
class RouterProc(Proc):
    admin_port: int = 0
    config_path: Path = field(default_factory=Path)

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"


def start_router(tmp: Path, config_yaml: str, *, env: dict[str, str] | None = None) -> RouterProc:
    """``config_yaml`` may use {port} and {admin_port}; they are filled with free ports."""
    port, admin_port = free_port(), free_port()
    path = tmp / f"router-{port}.yaml"
    path.write_text(config_yaml.replace("{port}", str(port)).replace("{admin_port}", str(admin_port)))
    log = tmp / f"router-{port}.log"
    proc = subprocess.Popen(
        [PY, "-m", "router", "run", "-c", str(path)],
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )
    r = RouterProc(proc, port, "router", log, admin_port=admin_port, config_path=path)
    try:
        wait_http(r.url + "/healthz", proc=proc)
    except Exception:
        r.stop()
        raise RuntimeError("router did not start:\n" + r.output()) from None
    return r


def router_config(sims: list[Proc], extra: str = "", instance_extra: str = "") -> str:
    """A router over ``sims``, its ports left as {port} and {admin_port} for start_router."""
    instances = [(s.name, s.url) for s in sims]
    flavor = sims[0].flavor if sims else WAHA  # the sims' API: the router's profile and keys
    return router_yaml(
        "{port}", "{admin_port}", instances, profile=flavor.name if flavor is not WAHA else None,
        instance_extra=flavor.instance_extra() + instance_extra, extra=extra
    )


T = TypeVar("T")


async def bounded(n: int, coros: Iterable[Awaitable[T]], timeout: float) -> list[T]:
    """Run ``coros`` with at most ``n`` in flight, all within ``timeout`` seconds."""
    sem = asyncio.Semaphore(n)

    async def one(c: Awaitable[T]) -> T:
        async with sem:
            return await c

    async with asyncio.timeout(timeout):
        return await asyncio.gather(*(one(c) for c in coros))
