"""wrk runs: the command line, a bounded run, its output parsed."""

from __future__ import annotations

import contextlib
import re
import shlex
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass

from bench.lib import WRK_DIR
from bench.lib.admin import Scrape
from bench.lib.procs import BenchError

LUA_SCRIPT = WRK_DIR / "sessions.lua"  # X-Session-Id drawn from N ids (and its variants)
REQUEST_PATH = "/v1/bench"  # any path: the generic profile reads only X-Session-Id
LUA_SEED = 1  # same request sequence for every target

_UNIT_US = {"us": 1.0, "ms": 1e3, "s": 1e6, "m": 60e6, "h": 3600e6}
_RPS = re.compile(r"^Requests/sec:\s+([\d.]+)", re.M)
_PCT = re.compile(r"^\s+(50|75|90|99)%\s+([\d.]+)(us|ms|s|m|h)\s*$", re.M)
_TOTAL = re.compile(r"^\s+(\d+) requests in ", re.M)
_NON2XX = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)")
_SOCKET = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")


@dataclass
class WrkResult:
    """One wrk run, and what the proxy benchmark measured around it (its JSON keys)."""

    rps: float
    requests: int
    latency_us: dict[str, float]  # "50", "75", "90", "99" -> microseconds
    non2xx: int
    socket_errors: dict[str, int]
    # Cores used during the run (CPU-seconds per wall-second): the proxy's process tree,
    # the backend nginx, wrk, and every other process on the machine (noise).
    proxy_cpu: float | None = None
    backend_cpu: float | None = None
    wrk_cpu: float | None = None
    others_cpu: float | None = None
    others_before: float | None = None  # other processes' load just before the run
    # Seen by the backends during the run: new connections accepted (a proxy that reuses
    # its upstream connections opens none once warm) and requests served.
    backend_accepts: int | None = None
    backend_requests: int | None = None
    # router-redis only: Redis commands the router sent (INFO commandstats difference,
    # this script's own commands subtracted) during this run and during its warmup, the
    # same total from total_commands_processed, assignments in Redis before the run,
    # clients connected, and the redis-server's CPU.
    redis_commands: dict[str, int] | None = None
    redis_commands_total: int | None = None
    redis_warmup_commands: dict[str, int] | None = None
    redis_assignments: int | None = None
    redis_clients: int | None = None
    redis_cpu: float | None = None
    # MONITOR during the measured run: commands by cause (leader lease, pub/sub
    # keepalive, other), and the first few "other" lines.
    redis_monitor: dict[str, dict[str, int]] | None = None
    redis_monitor_samples: list[str] | None = None
    # Routers with metrics on: /metrics scraped right before the measured run, during it
    # (under load) and right after it; the responses router_requests_total counted in
    # between (at least every response wrk received; the warmup's last in-flight requests
    # and the health checks' are not in it, they do not go through the proxy).
    scrapes: list[Scrape] | None = None
    metrics_counted: int | None = None
    # router-workers2: cores used by each worker process (the master's apart), i.e. how
    # the kernel spread wrk's connections over the workers (SO_REUSEPORT).
    worker_cpu: list[float] | None = None
    master_cpu: float | None = None
    # router-accesslog: lines in its access log after the warmup and this run (the file
    # is emptied before the warmup): at least one per response wrk received.
    access_lines: int | None = None

    @property
    def errors(self) -> int:
        """Non-2xx responses and socket errors."""
        return self.non2xx + sum(self.socket_errors.values())

    def errors_text(self) -> str:
        """The errors, as a failure message says them."""
        sock = ", ".join(f"{k} {v}" for k, v in self.socket_errors.items() if v) or "none"
        return f"{self.non2xx} non-2xx responses, socket errors: {sock}"


def parse_wrk(text: str) -> WrkResult:
    """wrk's summary (with ``--latency``) as a :class:`WrkResult`."""
    rps = _RPS.search(text)
    total = _TOTAL.search(text)
    pcts = {m.group(1): float(m.group(2)) * _UNIT_US[m.group(3)] for m in _PCT.finditer(text)}
    if rps is None or total is None or not {"50", "99"} <= pcts.keys():
        raise BenchError(f"cannot parse wrk output:\n{text}")
    non2xx = _NON2XX.search(text)
    sock = _SOCKET.search(text)
    socket_errors = (
        dict(zip(("connect", "read", "write", "timeout"), map(int, sock.groups()), strict=True))
        if sock
        else {}
    )
    return WrkResult(
        rps=float(rps.group(1)),
        requests=int(total.group(1)),
        latency_us=pcts,
        non2xx=int(non2xx.group(1)) if non2xx else 0,
        socket_errors=socket_errors,
    )


def wrk_base(connections: int, duration: float, threads: int = 1) -> list[str]:
    """``wrk -tT -cC -dDs --latency`` (a script, the URL and its arguments follow)."""
    return ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration:g}s", "--latency"]


def run_wrk(argv: list[str], duration: float) -> tuple[WrkResult, str]:
    """Run wrk (``argv``, lasting ``duration`` s) to its end; its result and output."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=duration + 30)
    except BaseException as e:  # timeout, Ctrl-C, SIGTERM: never leave wrk behind
        proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
        if isinstance(e, subprocess.TimeoutExpired):
            raise BenchError(
                f"wrk did not finish within {duration + 30:.0f}s: {shlex.join(argv)}"
            ) from e
        raise
    output = stdout + stderr
    if proc.returncode != 0:
        raise BenchError(f"wrk exited with {proc.returncode}: {shlex.join(argv)}\n{output}")
    return parse_wrk(output), output


def wrk_until(
    argv: list[str], check: Callable[[], bool], timeout: float, interval: float = 0.25
) -> tuple[bool, str]:
    """Run wrk (``argv``, with a ``-d`` longer than ``timeout``) until ``check()`` is true
    or ``timeout`` seconds passed, then stop it with SIGINT (wrk prints its summary then).
    Returns whether ``check`` passed, and wrk's output."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ok = False
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(interval)
            if check():
                ok = True
                break
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate(timeout=5)
    return ok, out
