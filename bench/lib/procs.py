"""Process control: every long-running process a benchmark starts lives in its own process
group, is watched while the benchmark runs and is stopped (with what it started) at the end;
loopback HTTP and Redis readiness checks; the end-of-run routine."""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from bench.lib import HOST


class BenchError(Exception):
    """A problem that stops the benchmark (a process died, a target never came up...)."""


@dataclass
class Proc:
    """A process started by :class:`Processes`, the leader of its own process group."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        """Its pid, also its process group's id."""
        return self.popen.pid

    def alive(self) -> bool:
        """Whether it has not exited."""
        return self.popen.poll() is None


class Processes:
    """Every long-running process the benchmark starts, each in its own process group
    (``start_new_session``) so that it and its workers can be stopped by group id."""

    def __init__(self) -> None:
        self.procs: list[Proc] = []

    def start(
        self,
        name: str,
        argv: list[str],
        log: Path,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> Proc:
        """Start ``argv`` with stdout and stderr appended to ``log``."""
        out = log.open("ab")
        try:
            popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env=env,
                start_new_session=True,
            )
        finally:
            out.close()  # the child holds its own copy
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def check_alive(self) -> None:
        """Raise :class:`BenchError`, with the log's tail, if a started process exited."""
        for p in self.procs:
            if not p.alive():
                raise BenchError(
                    f"{p.name} (pid {p.pid}) exited with code {p.popen.returncode}\n"
                    + tail(p.log, title=f"{p.name} log")
                )

    def stop(self, proc: Proc) -> list[str]:
        """Stop one process (its group) before the end of the run; what was left."""
        if proc in self.procs:
            self.procs.remove(proc)
        return stop_group(proc)

    def stop_all(self) -> list[str]:
        """Stop in reverse start order (proxies before backends); return what was left."""
        problems: list[str] = []
        for p in reversed(self.procs):
            problems += stop_group(p)
        self.procs.clear()
        return problems


def group_alive(pgid: int) -> bool:
    """Whether any process of group ``pgid`` is still there."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - the group id was reused by someone else
        return False
    return True


def stop_group(p: Proc, timeout: float = 12.0) -> list[str]:
    """SIGTERM the group, SIGKILL it after ``timeout`` s; what went wrong (empty: clean)."""
    # The group id is the pid of the process we started (start_new_session): this reaches
    # it and its own children (nginx workers), nothing else.
    pgid = p.pid
    if group_alive(pgid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        p.popen.poll()  # reap the leader so the group can disappear
        if not group_alive(pgid):
            return []
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        p.popen.wait(timeout=5)
    time.sleep(0.2)
    if group_alive(pgid):
        return [f"{p.name} (process group {pgid}) is STILL RUNNING after SIGKILL"]
    return [f"{p.name} (pid {p.pid}) ignored SIGTERM for {timeout:.0f}s: killed"]


def tail(path: Path, lines: int = 40, title: str = "log") -> str:
    """The last ``lines`` lines of a log, framed with its title and path."""
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError as e:
        return f"--- {title}: unreadable ({e}) ---"
    body = "\n".join(text[-lines:]) if text else "(empty)"
    return f"--- {title} ({path}), last {min(lines, len(text))} lines ---\n{body}\n--- end ---"


def router_argv(conf: Path) -> list[str]:
    """``python -m router run -c conf``, to run in the repo root (this checkout's router/)."""
    return [sys.executable, "-m", "router", "run", "-c", str(conf)]


def module_argv(module: str, *args: str) -> list[str]:
    """This interpreter running ``module`` (``bench.x``: run it with ``cwd=REPO``)."""
    return [sys.executable, "-m", module, *args]


def finish(
    procs: Processes,
    failures: list[str],
    logs: list[Path],
    tmp: Path,
    keep_tmp: bool,
    tail_lines: int = 40,
) -> int:
    """The end of every benchmark (in its ``finally``, SIGINT already ignored): stop every
    process, print what was left and every failure with the tails of the logs, remove (or
    keep) the temp dir; the exit code."""
    try:
        left = procs.stop_all()
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    for problem in left:
        print(f"CLEANUP: {problem}", file=sys.stderr)
    if failures:
        print("\n" + "=" * 72, file=sys.stderr)
        print("FAIL: the benchmark found problems:", file=sys.stderr)
        for f in failures:
            print(f"  - {f}", file=sys.stderr)
        for log in logs:
            if log.exists() and log.stat().st_size:
                print(tail(log, tail_lines, log.stem + " log"), file=sys.stderr)
        print("=" * 72, file=sys.stderr)
    if keep_tmp:
        print(f"kept {tmp}", file=sys.stderr)
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    return 1 if failures or left else 0


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def signals_interrupt() -> Iterator[None]:
    """SIGTERM / SIGHUP behave like Ctrl-C, so the cleanup in ``finally`` always runs."""
    old = {s: signal.signal(s, _raise_interrupt) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


# --------------------------------------------------------------------------- readiness


def http_get(
    port: int, path: str, headers: dict[str, str] | None = None, timeout: float = 2.0
) -> tuple[int, dict[str, str], bytes]:
    """GET ``path`` on the loopback ``port``: status, headers (lower-case names), body."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body
    finally:
        conn.close()


def http_post(port: int, path: str, body: bytes, timeout: float = 5.0) -> tuple[int, bytes]:
    """POST a JSON ``body`` to ``path`` on the loopback ``port``: status and body."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def listening_sockets(port: int) -> int:
    """How many sockets listen on 127.0.0.1:``port`` (/proc/net/tcp): with SO_REUSEPORT,
    every worker of a ``listen.workers: N`` router has its own."""
    want = f"0100007F:{port:04X}"
    n = 0
    with contextlib.suppress(OSError), open("/proc/net/tcp") as f:
        for line in f:
            fields = line.split()
            if len(fields) > 3 and fields[1] == want and fields[3] == "0A":  # TCP_LISTEN
                n += 1
    return n


def wait_listeners(procs: Processes, port: int, n: int, what: str, timeout: float = 30.0) -> None:
    """Wait until ``n`` sockets listen on ``port`` (every worker bound it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        procs.check_alive()
        if listening_sockets(port) >= n:
            return
        time.sleep(0.1)
    raise BenchError(
        f"{what}: {listening_sockets(port)} socket(s) listen on port {port} after "
        f"{timeout:.0f}s, expected {n} (one per worker)"
    )


def wait_http(procs: Processes, port: int, path: str, what: str, timeout: float = 20.0) -> None:
    """Wait until GET ``path`` answers 200, failing early if a started process died."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        procs.check_alive()
        try:
            status, _, body = http_get(port, path, timeout=0.5)
            if status == 200:
                return
            last = f"HTTP {status}: {body[:200]!r}"
        except OSError as e:
            last = str(e)
        time.sleep(0.1)
    raise BenchError(
        f"{what}: GET http://{HOST}:{port}{path} not 200 after {timeout:.0f}s ({last})"
    )


def wait_until(check: Callable[[], bool], timeout: float, interval: float = 0.2) -> bool:
    """Poll ``check`` until it is true (True) or ``timeout`` s passed (False)."""
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def redis_ping(port: int, timeout: float = 0.5) -> bool:
    """True when the server answers PING with PONG (not -LOADING while it reads its AOF)."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def wait_redis(procs: Processes, port: int, timeout: float = 20.0) -> None:
    """Wait until the redis-server on ``port`` answers PING with PONG."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        procs.check_alive()
        if redis_ping(port):
            return
        time.sleep(0.05)
    raise BenchError(f"redis-server on port {port}: no PONG after {timeout:.0f}s")
