"""End-to-end proxy benchmark: wa-router against nginx (and HAProxy) on the same backends.

    /work/venv/bin/python bench/proxy_bench.py [--duration 10] [--connections 32]
        [--sessions 1000] [--repeats 2] [--scrapes 1]
        [--targets direct,nginx,haproxy,router,router-nometrics,router-redis,router-workers2]

One run does everything, on 127.0.0.1 only:

1. starts one nginx (1 worker) serving three tiny-JSON backends b1..b3 on free ports;
2. starts each proxy under test on its own free port, in front of those same backends:
   nginx (``hash $http_x_session_id consistent`` + upstream keepalive), HAProxy
   (``balance hdr(X-Session-Id)`` + ``hash-type consistent``, 1 thread) when installed,
   and wa-router (``python -m router run -c cfg.yaml``, profile ``generic``) three times:
   with the in-memory store (``router``), the same with ``metrics: {enabled: false}``
   (``router-nometrics``: no per-request accounting, /metrics answers 404) and with the
   Redis store (``router-redis``) against a redis-server the script starts itself (free
   port, temp dir, appendonly, no other client); and ``router-workers2``: the Redis config
   plus ``listen.workers: 2`` (two worker processes sharing the port with SO_REUSEPORT),
   against a redis-server of its own;
3. checks every target answers 200 and is sticky (one session, one backend), then runs wrk
   (``bench/wrk/sessions.lua``: X-Session-Id drawn from N ids) against each target in turn,
   each measured run preceded by a short warmup, and repeats the whole sequence R times
   (interleaved, so that noise hits every target alike), reporting medians;
   For ``router-redis`` it also reads ``INFO commandstats`` before and after each warmup
   and measured run: the Redis commands the router sent while serving cached sessions
   (issue 3: none), besides this script's own INFO calls.
   For the routers with metrics on it scrapes the admin /metrics before, during (under
   load, ``--scrapes`` times) and after each measured run: scraping works under load, its
   latency, and the responses counted must cover every response wrk received;
   ``router`` and ``router-nometrics`` swap places every other round, and the report
   gives router / router-nometrics per round, its median and a bootstrap interval of that
   median: what metrics cost (issue 6: at most 5%);
4. prints a markdown table and writes it, with the raw numbers as JSON, to bench/out/;
5. stops every process it started (also on Ctrl-C / SIGTERM) and checks none is left.

It exits 1, loudly, if any target answered a non-2xx status or had socket errors (in a
warmup or a measured run), was not sticky, or died; the router's log tail is printed then.
The "direct" row (wrk straight to backend b1) calibrates the machine against the anchors.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import http.client
import json
import os
import platform
import random
import re
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
LUA_SCRIPT = BENCH_DIR / "wrk" / "sessions.lua"
HOST = "127.0.0.1"
BACKENDS = ("b1", "b2", "b3")
REQUEST_PATH = "/v1/bench"  # any path: the generic profile reads only X-Session-Id
ALL_TARGETS = (
    "direct", "nginx", "haproxy", "router", "router-nometrics", "router-redis", "router-workers2",
)  # fmt: skip
# targets that are a wa-router process (router-workers2: a master and two workers)
ROUTERS = ("router", "router-nometrics", "router-redis", "router-workers2")
WORKERS2 = "router-workers2"  # listen.workers: 2, Redis store (its own redis-server)
METRICS_PAIR = ("router", "router-nometrics")  # metrics on / off, same config otherwise
METRICS_TARGET = 0.95  # issue 6: router / router-nometrics >= 0.95 (cost <= 5%)
REDIS_PREFIX = "bench:"
NOISY = 0.10  # other processes using more than this share of a core make a run noisy
LUA_SEED = 1  # same request sequence for every target
CLK_TCK = os.sysconf("SC_CLK_TCK")


class BenchError(Exception):
    """A problem that stops the benchmark (a process died, a target never came up...)."""


# --------------------------------------------------------------------------- processes


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None


class Processes:
    """Every long-running process the benchmark starts, each in its own process group
    (``start_new_session``) so that it and its workers can be stopped by group id."""

    def __init__(self) -> None:
        self.procs: list[Proc] = []

    def start(self, name: str, argv: list[str], log: Path, cwd: Path | None = None) -> Proc:
        out = log.open("ab")
        try:
            popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                start_new_session=True,
            )
        finally:
            out.close()  # the child holds its own copy
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def check_alive(self) -> None:
        for p in self.procs:
            if not p.alive():
                raise BenchError(
                    f"{p.name} (pid {p.pid}) exited with code {p.popen.returncode}\n"
                    + tail(p.log, title=f"{p.name} log")
                )

    def stop_all(self) -> list[str]:
        """Stop in reverse start order (proxies before backends); return what was left."""
        problems: list[str] = []
        for p in reversed(self.procs):
            problems += _stop(p)
        self.procs.clear()
        return problems


def add_quiet_args(p: argparse.ArgumentParser) -> None:
    """--wait-quiet and --noisy-retries, as every benchmark here takes them."""
    p.add_argument(
        "--wait-quiet",
        type=float,
        default=15,
        help="before each measured run, wait up to this many seconds for other processes "
        "to use < 10%% of a core (15)",
    )
    p.add_argument(
        "--noisy-retries",
        type=int,
        default=2,
        help="run a measurement again (up to this many times) when other processes used "
        "more than 10%% of a core during it (2)",
    )


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


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - the group id was reused by someone else
        return False
    return True


def _stop(p: Proc, timeout: float = 12.0) -> list[str]:
    # The group id is the pid of the process we started (start_new_session): this reaches
    # it and its own children (nginx workers), nothing else.
    pgid = p.pid
    if _group_alive(pgid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        p.popen.poll()  # reap the leader so the group can disappear
        if not _group_alive(pgid):
            return []
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        p.popen.wait(timeout=5)
    time.sleep(0.2)
    if _group_alive(pgid):
        return [f"{p.name} (process group {pgid}) is STILL RUNNING after SIGKILL"]
    return [f"{p.name} (pid {p.pid}) ignored SIGTERM for {timeout:.0f}s: killed"]


def tail(path: Path, lines: int = 40, title: str = "log") -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError as e:
        return f"--- {title}: unreadable ({e}) ---"
    body = "\n".join(text[-lines:]) if text else "(empty)"
    return f"--- {title} ({path}), last {min(lines, len(text))} lines ---\n{body}\n--- end ---"


def tree_pids(pid: int) -> list[int]:
    """``pid`` and its descendants (nginx master + workers)."""
    out = [pid]
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                for child in f.read().split():
                    out += tree_pids(int(child))
    except OSError:
        pass
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` and its descendants, in seconds."""
    total = 0
    for p in tree_pids(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return total / CLK_TCK


def cpu_seconds_own(pid: int) -> float:
    """User + system CPU time of ``pid`` alone (not its children), in seconds."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_cpu_seconds() -> float:
    """CPU time the whole machine spent in user, nice and system mode, in seconds.
    irq/softirq are left out: they are not charged to processes, so they cannot be split
    between our processes and others (loopback traffic makes a lot of softirq)."""
    with open("/proc/stat") as f:
        fields = f.readline().split()
    user, nice, system = (int(x) for x in fields[1:4])
    return (user + nice + system) / CLK_TCK


def children_cpu_seconds() -> float:
    """CPU time of the waited-for children of this process (wrk runs), in seconds."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


@dataclass
class CpuSnapshot:
    """CPU counters at one instant: the target tree, the backend tree, wrk, the
    redis-server (when one runs), the machine."""

    wall: float
    target: float
    backend: float
    wrk: float
    redis: float
    machine: float
    idle: float = 0.0  # our other processes, idle during this run (other routers, say)

    @classmethod
    def take(
        cls,
        target_pid: int | None,
        backend_pid: int,
        redis_pid: int | None = None,
        idle_pids: Sequence[int] = (),
    ) -> CpuSnapshot:
        return cls(
            wall=time.monotonic(),
            target=cpu_seconds(target_pid) if target_pid is not None else 0.0,
            backend=cpu_seconds(backend_pid),
            wrk=children_cpu_seconds(),
            redis=cpu_seconds(redis_pid) if redis_pid is not None else 0.0,
            machine=machine_cpu_seconds(),
            idle=sum(cpu_seconds(p) for p in idle_pids),
        )

    def usage_since(self, before: CpuSnapshot) -> dict[str, float]:
        """Cores used between ``before`` and now, per part; ``others`` is every process
        that is not ours (a test suite running next to the benchmark, say)."""
        wall = self.wall - before.wall
        used = {
            "target": (self.target - before.target) / wall,
            "backend": (self.backend - before.backend) / wall,
            "wrk": (self.wrk - before.wrk) / wall,
            "redis": (self.redis - before.redis) / wall,
            "idle": (self.idle - before.idle) / wall,
        }
        used["others"] = max(0.0, (self.machine - before.machine) / wall - sum(used.values()))
        return used


def wait_quiet(procs: Processes, max_wait: float, limit: float = 0.10) -> float:
    """Wait (at most ``max_wait`` s) until processes that are not ours use less than
    ``limit`` of a core over half a second; return the last value seen."""
    deadline = time.monotonic() + max_wait
    said = False
    while True:
        pids = [p.pid for p in procs.procs]
        t0, m0 = time.monotonic(), machine_cpu_seconds()
        ours0 = sum(cpu_seconds(p) for p in pids)
        time.sleep(0.5)
        ours1 = sum(cpu_seconds(p) for p in pids)
        others = max(0.0, (machine_cpu_seconds() - m0 - (ours1 - ours0)) / (time.monotonic() - t0))
        if others < limit or time.monotonic() >= deadline:
            if said:
                print(f"  ... done waiting: others at {others:.0%}", file=sys.stderr)
            return others
        if not said:
            print(
                f"  waiting up to {max_wait:g}s: other processes use {others:.0%} of a core",
                file=sys.stderr,
                flush=True,
            )
            said = True


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) from /proc/PID/status, in KiB."""
    out: dict[str, int] = {}
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
    return out


def tree_memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM summed over ``pid`` and its descendants (a router master and its
    workers), in KiB; ``processes``: how many there were."""
    out = {"VmRSS": 0, "VmHWM": 0, "processes": 0}
    for p in tree_pids(pid):
        mem = memory_kib(p)
        if mem:
            out["processes"] += 1
            for key in ("VmRSS", "VmHWM"):
                out[key] += mem.get(key, 0)
    return out


# --------------------------------------------------------------------------- ports, HTTP


def free_ports(n: int) -> list[int]:
    """``n`` distinct free loopback ports (all held open until every one is chosen)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((HOST, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def http_get(
    port: int, path: str, headers: dict[str, str] | None = None, timeout: float = 2.0
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body
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


# --------------------------------------------------------------------------- configs


def backend_nginx_conf(tmp: Path, ports: list[int], status_port: int) -> str:
    # The status server counts connections accepted and requests served by all three
    # backends: how many upstream connections a proxy opens, and that it forwards all.
    status = f"""
    server {{
        listen {HOST}:{status_port};
        location / {{ stub_status; }}
    }}"""
    servers = status + "\n".join(
        f"""    server {{
        listen {HOST}:{port} backlog=4096;
        default_type application/json;
        location / {{ return 200 '{{"ok":true,"node":"{name}"}}'; }}
    }}"""
        for name, port in zip(BACKENDS, ports, strict=True)
    )
    return _nginx_conf(tmp / "backend", servers)


def proxy_nginx_conf(tmp: Path, port: int, backend_ports: list[int]) -> str:
    upstream = "\n".join(f"        server {HOST}:{p};" for p in backend_ports)
    body = f"""    upstream backends {{
        hash $http_x_session_id consistent;
{upstream}
        keepalive 64;
        keepalive_requests 1000000;
    }}
    server {{
        listen {HOST}:{port} backlog=4096;
        location / {{
            proxy_pass http://backends;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}"""
    return _nginx_conf(tmp / "nginx-proxy", body)


def _nginx_conf(prefix: Path, servers: str) -> str:
    prefix.mkdir(parents=True, exist_ok=True)
    temps = "\n".join(
        f"    {kind}_temp_path {prefix / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    # keepalive_requests: nginx closes a client connection after 1000 requests by default;
    # wrk and the router keep theirs open, so lift the cap to measure proxying, not
    # reconnects (the router has no such cap either).
    return f"""worker_processes 1;
daemon off;
pid {prefix / "nginx.pid"};
error_log {prefix / "error.log"} warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 1000000;
{temps}
{servers}
}}
"""


_STUB = re.compile(r"server accepts handled requests\s+(\d+)\s+(\d+)\s+(\d+)")


def backend_counters(status_port: int) -> tuple[int, int]:
    """(connections accepted, requests served) by the backend nginx so far, not counting
    the status request itself."""
    status, _, body = http_get(status_port, "/")
    m = _STUB.search(body.decode())
    if status != 200 or m is None:
        raise BenchError(f"backend stub_status: HTTP {status} {body[:200]!r}")
    return int(m.group(1)) - 1, int(m.group(3)) - 1


def haproxy_conf(port: int, backend_ports: list[int]) -> str:
    servers = "\n".join(
        f"    server {name} {HOST}:{p}" for name, p in zip(BACKENDS, backend_ports, strict=True)
    )
    return f"""global
    nbthread 1
    maxconn 4096

defaults
    mode http
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    http-reuse always

frontend fe
    bind {HOST}:{port}
    default_backend be

backend be
    balance hdr(X-Session-Id)
    hash-type consistent
{servers}
"""


def router_conf(
    port: int,
    admin_port: int,
    backend_ports: list[int],
    redis_port: int | None = None,
    metrics: bool = True,
    workers: int = 1,
) -> str:
    """The router's config; with ``redis_port``, the same plus the Redis store; with
    ``metrics`` false, the same plus ``metrics: {enabled: false}``; with ``workers`` > 1,
    ``listen.workers`` (which needs the Redis store)."""
    instances = "\n".join(
        f"  - {{name: {name}, url: 'http://{HOST}:{p}'}}"
        for name, p in zip(BACKENDS, backend_ports, strict=True)
    )
    store = (
        f'store: {{url: "redis://{HOST}:{redis_port}/0", prefix: "{REDIS_PREFIX}"}}\n'
        if redis_port is not None
        else ""
    )
    if not metrics:
        store += "metrics: {enabled: false}\n"
    listen = f"host: {HOST}, port: {port}" + (f", workers: {workers}" if workers > 1 else "")
    return f"""listen: {{{listen}}}
admin: {{host: {HOST}, port: {admin_port}}}
profile: generic
log: {{level: WARNING}}
{store}instances:
{instances}
"""


# --------------------------------------------------------------------------- redis


class RedisProbe:
    """A minimal RESP client on one raw socket, for INFO and a few checks.

    Not redis-py on purpose: redis-py sends commands of its own when it connects
    (``CLIENT SETINFO``...), and every command this probe sends must be known, because it
    is subtracted from the counts. The probe names itself ``bench-probe`` once, at connect.
    """

    def __init__(self, port: int, timeout: float = 5.0) -> None:
        self.sock = socket.create_connection((HOST, port), timeout=timeout)
        self.file = self.sock.makefile("rb")
        self.sent: Counter[str] = Counter()  # commands sent, as commandstats names them
        self.command("CLIENT", "SETNAME", "bench-probe")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.file.close()
            self.sock.close()

    def command(self, *args: str) -> object:
        name = args[0].lower()
        if name in ("client", "config") and len(args) > 1:
            name += "|" + args[1].lower()
        self.sent[name] += 1
        parts = [f"*{len(args)}\r\n".encode()]
        for a in args:
            data = a.encode()
            parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
        self.sock.sendall(b"".join(parts))
        return self._read()

    def _read(self) -> object:
        line = self.file.readline()
        if not line.endswith(b"\r\n"):
            raise BenchError(f"redis: connection closed ({line!r})")
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise BenchError(f"redis error: {rest.decode(errors='replace')}")
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            data = self.file.read(n + 2)
            return data[:-2].decode(errors="replace")
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self._read() for _ in range(n)]
        raise BenchError(f"redis: unexpected reply {line[:100]!r}")

    def snapshot(self) -> RedisStats:
        """``INFO stats commandstats clients`` (Redis >= 7: several sections at once).

        Redis updates its counters after a command has run, so a snapshot does not count
        the INFO that took it; the commands this probe sent before it are noted with it."""
        sent_before = Counter(self.sent)
        text = self.command("INFO", "stats", "commandstats", "clients")
        assert isinstance(text, str)
        calls: dict[str, int] = {}
        values: dict[str, str] = {}
        for line in text.splitlines():
            key, sep, value = line.partition(":")
            if not sep:
                continue
            if key.startswith("cmdstat_"):
                m = re.search(r"(?:^|,)calls=(\d+)", value)
                if m:
                    calls[key.removeprefix("cmdstat_")] = int(m.group(1))
            else:
                values[key] = value.strip()
        return RedisStats(
            calls=calls,
            total=int(values["total_commands_processed"]),
            clients=int(values["connected_clients"]),
            sent=sent_before,
        )


@dataclass
class RedisStats:
    calls: dict[str, int]  # command -> calls so far (commandstats)
    total: int  # total_commands_processed
    clients: int  # connected_clients
    sent: Counter[str]  # commands the probe had sent before this snapshot's INFO

    def own_since(self, before: RedisStats) -> Counter[str]:
        """What the probe sent between two snapshots (the earlier one's INFO included)."""
        return self.sent - before.sent

    def since(self, before: RedisStats) -> dict[str, int]:
        """Commands others (the router) called between ``before`` and this snapshot: the
        commandstats difference minus the probe's own commands; only the non-zero ones."""
        own = self.own_since(before)
        out: dict[str, int] = {}
        for name in sorted(self.calls.keys() | before.calls.keys()):
            n = self.calls.get(name, 0) - before.calls.get(name, 0) - own.get(name, 0)
            if n:
                out[name] = n
        return out

    def total_since(self, before: RedisStats) -> int:
        """The same from ``total_commands_processed`` (a cross-check of ``since``)."""
        return self.total - before.total - sum(self.own_since(before).values())


def redis_args(tmp: Path, port: int) -> list[str]:
    data = tmp / "redis"
    data.mkdir(parents=True, exist_ok=True)
    return [
        "redis-server",
        "--port", str(port),
        "--bind", HOST,
        "--dir", str(data),
        "--save", "",
        "--appendonly", "yes",
        "--daemonize", "no",
        "--logfile", "",  # stdout, which goes to the log file
        "--unixsocket", "",
    ]  # fmt: skip


def wait_redis(procs: Processes, port: int, timeout: float = 20.0) -> None:
    """Wait until the server answers PING with PONG (not -LOADING)."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        procs.check_alive()
        try:
            with socket.create_connection((HOST, port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                reply = s.recv(64)
            if reply.startswith(b"+PONG"):
                return
            last = repr(reply)
        except OSError as e:
            last = str(e)
        time.sleep(0.05)
    raise BenchError(f"redis-server on port {port}: no PONG after {timeout:.0f}s ({last})")


_MONITOR_LINE = re.compile(r"^\+?\S+ \[\d+ ([^\]]+)\] (.*)$")
_MONITOR_ARG = re.compile(r'"((?:[^"\\]|\\.)*)"')
LEASE = "leader lease (timer)"
KEEPALIVE = "pub/sub keepalive (timer)"
DRAIN_SYNC = "drain sync (timer)"  # SMEMBERS P drained, every router, once a second
WORKER_STATS = "worker stats (timer)"  # workers: N: SET P workers:<i> once a second
OTHER = "other"


class RedisMonitor:
    """``MONITOR`` on its own connection, read by a thread, during one measured run: which
    connection sent each command, so that timer-driven commands (the leader lease renewal,
    the pub/sub keepalive PING) can be told apart from any a request would cause.

    Commands run inside Lua scripts show as coming from ``lua``. ``stop()`` makes the probe
    send an ``ECHO`` marker and reads until it, so that nothing executed before is missed."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection((HOST, port), timeout=5.0)
        self.file = self.sock.makefile("rb")
        self.sock.sendall(b"CLIENT SETNAME bench-monitor\r\nMONITOR\r\n")
        for _ in range(2):
            reply = self.file.readline()
            if not reply.startswith(b"+OK"):
                raise BenchError(f"redis MONITOR: unexpected reply {reply[:100]!r}")
        self.sock.settimeout(None)
        self.lines: list[str] = []
        self.marker: str | None = None
        self.seen_marker = threading.Event()
        self.thread = threading.Thread(target=self._read, name="redis-monitor", daemon=True)
        self.thread.start()

    def _read(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            for raw in self.file:
                line = raw.decode(errors="replace").rstrip("\r\n")
                if self.marker is not None and f'"echo" "{self.marker}"' in line.lower():
                    self.seen_marker.set()
                    return
                if len(self.lines) < 100_000:  # enough to classify; bounded memory
                    self.lines.append(line)

    def stop(self, probe: RedisProbe) -> list[str]:
        self.marker = f"bench-monitor-end-{time.monotonic_ns()}"
        probe.command("ECHO", self.marker)
        found = self.seen_marker.wait(10)
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self.file.close()
            self.sock.close()
        self.thread.join(5)
        if not found:
            raise BenchError("redis MONITOR: the end marker never arrived")
        return self.lines


def classify_monitor(
    lines: list[str], own: set[str], subscribers: set[str]
) -> tuple[dict[str, dict[str, int]], list[str]]:
    """Commands seen by MONITOR, minus those of ``own`` addresses, by cause: the leader
    lease (its scripts and their commands touch only ``P leader*`` keys), the pub/sub
    keepalive (PING on a subscribed connection), the drainer's sync of operator drains
    (SMEMBERS of ``P drained``, once a second), with ``listen.workers: N`` the workers'
    counter snapshots (SET ``P workers:<i>`` once a second, MGET when /metrics is read),
    other. Also the first "other" lines."""
    out: dict[str, Counter[str]] = {
        LEASE: Counter(), KEEPALIVE: Counter(), DRAIN_SYNC: Counter(), WORKER_STATS: Counter(),
        OTHER: Counter(),
    }  # fmt: skip
    drained = REDIS_PREFIX + "drained"
    worker_stats = REDIS_PREFIX + "workers:"
    samples: list[str] = []
    lease = REDIS_PREFIX + "leader"
    for line in lines:
        m = _MONITOR_LINE.match(line)
        if m is None:
            continue
        source, args = m.group(1), _MONITOR_ARG.findall(m.group(2))
        if source in own or not args:
            continue
        cmd = args[0].lower()
        if cmd in ("evalsha", "eval", "evalsha_ro", "eval_ro") and len(args) > 2:
            keys = args[3 : 3 + int(args[2])] if args[2].isdigit() else []
        else:
            keys = args[1:2]
        name = cmd + (" (in a script)" if source == "lua" else "")
        if keys and all(k.startswith(lease) for k in keys):
            out[LEASE][name] += 1
        elif cmd == "ping" and source in subscribers:
            out[KEEPALIVE][name] += 1
        elif cmd == "smembers" and keys == [drained]:
            out[DRAIN_SYNC][name] += 1
        elif cmd in ("set", "mget") and keys and all(k.startswith(worker_stats) for k in keys):
            out[WORKER_STATS][name] += 1
        else:
            out[OTHER][name] += 1
            if len(samples) < 10:
                samples.append(line[:300])
    return {k: dict(v) for k, v in out.items()}, samples


def client_list(probe: RedisProbe) -> list[dict[str, str]]:
    listing = probe.command("CLIENT", "LIST")
    text = listing if isinstance(listing, str) else ""
    return [
        dict(f.split("=", 1) for f in line.split() if "=" in f) for line in text.splitlines()
    ]


def fmt_commands(commands: dict[str, int]) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in sorted(commands.items())) or "none"


# --------------------------------------------------------------------------- /metrics


_REQUESTS_SAMPLE = re.compile(r"^router_requests_total\{[^}]*\} (\S+)$", re.M)


@dataclass
class Scrape:
    """One GET of a router's admin /metrics."""

    at: float  # seconds since the measured run started (negative: before it)
    seconds: float  # until the whole body was read
    status: int
    size: int  # body bytes
    responses: int | None  # sum of every router_requests_total sample


def scrape_metrics(admin_port: int, t0: float, timeout: float = 5.0) -> Scrape:
    start = time.monotonic()
    status, _, body = http_get(admin_port, "/metrics", timeout=timeout)
    seconds = time.monotonic() - start
    samples = _REQUESTS_SAMPLE.findall(body.decode(errors="replace")) if status == 200 else []
    return Scrape(
        at=start - t0,
        seconds=seconds,
        status=status,
        size=len(body),
        responses=round(sum(float(v) for v in samples)) if status == 200 else None,
    )


class LoadScraper:
    """Scrapes /metrics ``n`` times, evenly spread over a measured run, from a thread
    (what Prometheus does, at a much higher rate than its usual 15 s interval)."""

    def __init__(self, admin_port: int, duration: float, n: int) -> None:
        self.admin_port, self.duration, self.n = admin_port, duration, n
        self.scrapes: list[Scrape] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self.t0 = time.monotonic()
        self.thread = threading.Thread(target=self._run, name="metrics-scraper", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        for k in range(1, self.n + 1):
            due = self.t0 + self.duration * k / (self.n + 1)
            if self._stop.wait(max(0.0, due - time.monotonic())):
                return
            try:
                self.scrapes.append(scrape_metrics(self.admin_port, self.t0))
            except (OSError, http.client.HTTPException) as e:
                self.errors.append(f"GET /metrics at {time.monotonic() - self.t0:.1f}s: {e}")

    def join(self) -> tuple[list[Scrape], list[str]]:
        self._stop.set()
        self.thread.join(10)
        return self.scrapes, self.errors


# --------------------------------------------------------------------------- wrk


_UNIT_US = {"us": 1.0, "ms": 1e3, "s": 1e6, "m": 60e6, "h": 3600e6}
_RPS = re.compile(r"^Requests/sec:\s+([\d.]+)", re.M)
_PCT = re.compile(r"^\s+(50|75|90|99)%\s+([\d.]+)(us|ms|s|m|h)\s*$", re.M)
_TOTAL = re.compile(r"^\s+(\d+) requests in ", re.M)
_NON2XX = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)")
_SOCKET = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")


@dataclass
class WrkResult:
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

    @property
    def errors(self) -> int:
        return self.non2xx + sum(self.socket_errors.values())


def parse_wrk(text: str) -> WrkResult:
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


def wrk_argv(args: argparse.Namespace, url: str, duration: float) -> list[str]:
    return [
        "wrk",
        f"-t{args.threads}",
        f"-c{args.connections}",
        f"-d{duration:g}s",
        "--latency",
        "-s",
        str(LUA_SCRIPT),
        url,
        "--",
        str(args.sessions),
        str(LUA_SEED),
    ]


def run_wrk(argv: list[str], duration: float) -> tuple[WrkResult, str]:
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


# --------------------------------------------------------------------------- targets


@dataclass
class Target:
    name: str
    label: str
    port: int
    proc: Proc | None  # the process under test (None: no proxy in between)
    runs: list[WrkResult] = field(default_factory=list)
    warmups: list[WrkResult] = field(default_factory=list)
    discarded: list[WrkResult] = field(default_factory=list)  # noisy runs done again
    placement: dict[str, str] = field(default_factory=dict)  # session -> backend node
    redis: RedisProbe | None = None  # router-redis: a probe on its redis-server
    redis_proc: Proc | None = None
    redis_port: int | None = None
    redis_first_warmup: dict[str, int] | None = None  # the one that placed the sessions
    redis_client_names: list[str] = field(default_factory=list)  # CLIENT LIST at the end
    admin_port: int | None = None  # routers: the admin API (/metrics)
    metrics: bool = False  # a router with metrics on: /metrics is scraped around each run
    idle_scrapes: dict[str, float] | None = None  # /metrics cost on the idle router
    workers: int = 1  # listen.workers (router-workers2: 2)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}{REQUEST_PATH}"

    def errors(self) -> int:
        return sum(r.errors for r in self.runs + self.warmups + self.discarded)

    def median(self, key: str) -> float:
        if key == "rps":
            return statistics.median(r.rps for r in self.runs)
        return statistics.median(r.latency_us[key] for r in self.runs)

    def median_int(self, which: str) -> int:
        return round(statistics.median(getattr(r, which) or 0 for r in self.runs))

    def max_cpu(self, which: str) -> float | None:
        values = [getattr(r, which) for r in self.runs if getattr(r, which) is not None]
        return max(values) if values else None

    def median_cpu(self, which: str) -> float | None:
        values = [getattr(r, which) for r in self.runs if getattr(r, which) is not None]
        return statistics.median(values) if values else None


def sticky_check(target: Target, sessions: int) -> list[str]:
    """A few sessions, three requests each: 200, a backend body, always the same backend.
    Records the placement, and compares it with a previous one (placements must not move)."""
    problems: list[str] = []
    sample = sorted({1, 2, 3, sessions // 2 or 1, sessions})
    for i in sample:
        session = f"sess-{i}"
        nodes: set[str] = set()
        for _ in range(3):
            try:
                status, headers, body = http_get(
                    target.port, REQUEST_PATH, {"X-Session-Id": session}
                )
            except OSError as e:
                problems.append(f"{target.name}: {session}: {e}")
                break
            if status != 200:
                problems.append(f"{target.name}: {session}: HTTP {status} {body[:200]!r}")
                break
            try:
                node = str(json.loads(body)["node"])
            except (ValueError, KeyError, TypeError):
                problems.append(f"{target.name}: {session}: unexpected body {body[:200]!r}")
                break
            nodes.add(node)
            if target.name in ROUTERS:
                via = headers.get("x-router-instance")
                if via != node:
                    problems.append(
                        f"{target.name}: {session}: X-Router-Instance {via!r} "
                        f"but body from {node!r}"
                    )
                if "x-request-id" not in headers:
                    problems.append(f"{target.name}: {session}: no X-Request-Id in the response")
        if len(nodes) > 1:
            problems.append(f"{target.name}: {session} is not sticky: {sorted(nodes)}")
        elif nodes:
            node = nodes.pop()
            before = target.placement.setdefault(session, node)
            if before != node:
                problems.append(f"{target.name}: {session} moved from {before} to {node}")
    return problems


# --------------------------------------------------------------------------- reporting


def fmt_us(us: float) -> str:
    return f"{us:.0f} us" if us < 1000 else f"{us / 1000:.2f} ms"


def fmt_pct(x: float | None) -> str:
    return "-" if x is None else f"{x * 100:.0f}%"


def version_of(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unavailable"
    lines = (done.stdout + done.stderr).strip().splitlines()
    return lines[0].strip() if lines else "unknown"


def machine_info() -> dict[str, str]:
    model = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    git = version_of(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    dirty = subprocess.run(
        ["git", "-C", str(REPO), "status", "--porcelain", "--", "router"],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    ).stdout.strip()
    router_version = version_of(
        [sys.executable, "-c", "import importlib.metadata as m; print(m.version('wa-router'))"]
    )
    return {
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "kernel": f"{platform.system()} {platform.release()}",
        "python": f"Python {platform.python_version()} ({sys.executable})",
        "nginx": version_of(["nginx", "-v"]).removeprefix("nginx version: "),
        "haproxy": version_of(["haproxy", "-v"]).split(" - ")[0],
        "wrk": version_of(["wrk", "-v"]).split(" Copyright")[0],
        "redis": version_of(["redis-server", "--version"]).split(" sha=")[0],
        "wa-router": f"{router_version} (git {git}{', router/ modified' if dirty else ''})",
    }


def render(
    args: argparse.Namespace,
    targets: list[Target],
    info: dict[str, str],
    started: dt.datetime,
    rss: dict[str, dict[str, int]],
    failures: list[str],
) -> str:
    nginx = next((t for t in targets if t.name == "nginx" and t.runs), None)
    base = nginx.median("rps") if nginx else None
    cmd = shlex.join([sys.executable, *sys.argv])
    wrk_cmd = shlex.join(wrk_argv(args, f"http://{HOST}:PORT{REQUEST_PATH}", args.duration))
    lines = [
        f"## Proxy benchmark, {started.strftime('%Y-%m-%d %H:%M:%S UTC')}",
        "",
        f"- command: `{cmd}`",
        f"- load: `{wrk_cmd}` against each target, each run after a {args.warmup:g} s warmup "
        f"(same command, `-d{args.warmup:g}s`); {args.repeats} interleaved rounds of "
        f"{', '.join(t.name for t in targets)}"
        + (
            " (router and router-nometrics swap places every other round)"
            if {t.name for t in targets} >= set(METRICS_PAIR)
            else ""
        )
        + "; medians shown",
        "- backends: one nginx, 1 worker, 3 servers b1..b3 returning "
        '`{"ok":true,"node":"bN"}` (application/json); every target on 127.0.0.1',
        "- machine: "
        + ", ".join(
            [
                f"{info['nproc']} CPUs ({info['cpu']})",
                info["kernel"],
                info["python"],
                f"nginx {info['nginx']}",
                info["haproxy"],
                info["wrk"],
                info["redis"],
                f"wa-router {info['wa-router']}",
            ]
        ),
        "",
        "| target | req/s | p50 | p99 | errors | ratio to nginx | proxy CPU | backend CPU "
        "| others CPU | upstream conns | req/s per run |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for t in targets:
        if not t.runs:
            lines.append(f"| {t.label} | - | - | - | {t.errors()} | - | - | - | - | - | (no run) |")
            continue
        rps = t.median("rps")
        ratio = "—" if t.name == "direct" or base is None else f"{rps / base:.2f}"
        per_run = ", ".join(f"{r.rps:,.0f}" for r in t.runs)
        lines.append(
            f"| {t.label} | {rps:,.0f} | {fmt_us(t.median('50'))} | {fmt_us(t.median('99'))} "
            f"| {t.errors()} | {ratio} | {fmt_pct(t.median_cpu('proxy_cpu'))} "
            f"| {fmt_pct(t.median_cpu('backend_cpu'))} | {fmt_pct(t.max_cpu('others_cpu'))} "
            f"| {t.median_int('backend_accepts'):,} | {per_run} |"
        )
    lines += [
        "",
        "errors: non-2xx (wrk counts statuses >= 400) + socket errors, warmups and noisy "
        "runs done again included. "
        "CPU: cores used during the measured runs (100% = one core; medians), by the proxy's "
        "process tree and the backend nginx; wrk takes the rest of the 2 cores. "
        "others: the most that processes not started by this benchmark used in any run "
        "(a test suite running alongside, say): above ~10%, the numbers are noisy. "
        "upstream conns: new connections the backends accepted during a measured run "
        "(median): a proxy that keeps its upstream connections alive opens ~none once warm.",
    ]
    for t in targets:
        churn = [r for r in t.runs if (r.backend_accepts or 0) > max(100, r.requests // 100)]
        if t.name != "direct" and churn:
            r = churn[0]
            lines.append(
                f"WARNING: {t.name} opened {r.backend_accepts:,} upstream connections for "
                f"{r.requests:,} requests: it does not reuse its upstream connections."
            )
    noisy = [t.name for t in targets if (t.max_cpu("others_cpu") or 0) > NOISY]
    if noisy:
        lines.append(
            f"WARNING: other processes used more than 10% of a core during runs of "
            f"{', '.join(noisy)}: rerun on a quiet machine before trusting these numbers."
        )
    for name in ROUTERS:
        if name in rss:
            mem = rss[name]
            procs_note = (
                f" (sum of {mem.get('end_processes', 0)} processes: master + workers)"
                if mem.get("end_processes", 1) > 1
                else ""
            )
            lines.append(
                f"Router RSS ({name}){procs_note}: "
                f"{mem.get('start_VmRSS', 0) / 1024:.1f} MiB after start, "
                f"{mem.get('end_VmRSS', 0) / 1024:.1f} MiB after the runs "
                f"(peak {mem.get('end_VmHWM', 0) / 1024:.1f} MiB), having routed "
                f"{args.sessions} distinct session ids."
            )
    lines += render_metrics(args, targets, nginx)
    lines += render_redis(targets, base)
    lines += render_workers(args, targets, base)
    if failures:
        lines.append(f"**FAILED**: {len(failures)} problem(s):")
        lines += [f"- {f.splitlines()[0]}" for f in failures]
    return "\n".join(lines) + "\n"


def metrics_cost(targets: list[Target]) -> dict[str, object] | None:
    """router / router-nometrics, per round (both ran in the same round, back to back)
    and as medians: what per-request accounting costs (issue 6: ratio >= 0.95)."""
    on = next((t for t in targets if t.name == METRICS_PAIR[0] and t.runs), None)
    off = next((t for t in targets if t.name == METRICS_PAIR[1] and t.runs), None)
    if on is None or off is None:
        return None
    pairs = list(zip(on.runs, off.runs, strict=False))
    ratios = [a.rps / b.rps for a, b in pairs]
    median_ratio = statistics.median(ratios)
    # Rounds in which neither run was noisy (others <= 10% of a core in both).
    quiet = [a.rps / b.rps for a, b in pairs if max(_others(a), _others(b)) <= NOISY]
    # Router CPU per response (us), on / off: less sensitive than req/s to how much of the
    # machine the router got, not to how fast the machine ran at the time.
    cpu = [
        (a.proxy_cpu / a.rps * 1e6, b.proxy_cpu / b.rps * 1e6)
        for a, b in pairs
        if a.proxy_cpu and b.proxy_cpu and a.rps and b.rps
    ]
    return {
        "per_round_on": [r.rps for r in on.runs],
        "per_round_off": [r.rps for r in off.runs],
        "per_round_ratio": ratios,
        "median_ratio": median_ratio,
        "median_ratio_ci95": bootstrap_median_ci(ratios),
        "ratio_of_medians": on.median("rps") / off.median("rps"),
        "quiet_rounds": len(quiet),
        "quiet_median_ratio": statistics.median(quiet) if quiet else None,
        "per_round_cpu_us": cpu,
        "median_cpu_ratio": statistics.median(b / a for a, b in cpu) if cpu else None,
        "cost": 1 - median_ratio,
        "target": METRICS_TARGET,
        "ok": median_ratio >= METRICS_TARGET,
    }


MIN_ROUNDS_CI = 6  # fewer rounds: a bootstrap interval of their median means nothing


def bootstrap_median_ci(values: list[float], level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the median (fixed seed: the same run gives the same
    interval): how far the median of so few noisy rounds can be trusted."""
    rng = random.Random(0)
    n = 4000
    medians = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(n))
    cut = round(n * (1 - level) / 2)
    return medians[cut], medians[n - 1 - cut]


def _others(r: WrkResult) -> float:
    return r.others_cpu or 0.0


def render_metrics(
    args: argparse.Namespace, targets: list[Target], nginx: Target | None
) -> list[str]:
    """The metrics section: router (metrics on) against router-nometrics, round by round,
    and what scraping /metrics under load showed."""
    cost = metrics_cost(targets)
    on = next((t for t in targets if t.name == METRICS_PAIR[0] and t.runs), None)
    off = next((t for t in targets if t.name == METRICS_PAIR[1] and t.runs), None)
    if cost is None or on is None or off is None:
        return []
    lines = [
        "",
        "### Metrics cost (issue 6)",
        "",
        "| round | order | router (metrics on) req/s | router-nometrics req/s "
        "| on / off | router CPU per response, on / off | others CPU, on / off "
        "| nginx req/s (reference) |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    ratios = cost["per_round_ratio"]
    assert isinstance(ratios, list)
    for i, (a, b, ratio) in enumerate(zip(on.runs, off.runs, ratios, strict=False), 1):
        order = "on, off" if i % 2 else "off, on"
        ref = f"{nginx.runs[i - 1].rps:,.0f}" if nginx is not None and i <= len(nginx.runs) else "-"
        lines.append(
            f"| {i} | {order} | {a.rps:,.0f} | {b.rps:,.0f} | {ratio:.3f} "
            f"| {_cpu_per_response(a)} / {_cpu_per_response(b)} "
            f"| {fmt_pct(a.others_cpu)} / {fmt_pct(b.others_cpu)} | {ref} |"
        )
    ref = f"{nginx.median('rps'):,.0f}" if nginx is not None else "-"
    cpu_ratio = cost["median_cpu_ratio"]
    lines.append(
        f"| median | | {on.median('rps'):,.0f} | {off.median('rps'):,.0f} "
        f"| **{cost['median_ratio']:.3f}** | "
        + (f"off / on: {cpu_ratio:.3f}" if isinstance(cpu_ratio, float) else "-")
        + f" | | {ref} |"
    )
    median_ratio = cost["median_ratio"]
    low, high = bootstrap_median_ci(ratios)  # the same interval as in the JSON
    assert isinstance(median_ratio, float)
    enough = len(ratios) >= MIN_ROUNDS_CI
    if median_ratio < METRICS_TARGET:
        verdict = "MISSED"
    elif not enough or low < METRICS_TARGET:
        verdict = "ok, but not resolved (too noisy or too few rounds): add rounds"
    else:
        verdict = "ok"
    interval = (
        f"95% bootstrap interval of that median {low:.3f}-{high:.3f}"
        if enough
        else f"no interval with fewer than {MIN_ROUNDS_CI} rounds"
    )
    lines += [
        "",
        f"- router / router-nometrics: **{median_ratio:.3f}** (median of the per-round "
        f"ratios; {interval}; ratio of the "
        f"medians {cost['ratio_of_medians']:.3f}, per-round range "
        f"{min(ratios):.3f}-{max(ratios):.3f}): metrics cost **{cost['cost']:.1%}** of "
        f"throughput; target <= {1 - METRICS_TARGET:.0%} (ratio >= {METRICS_TARGET}): "
        f"{verdict}",
        f"- rounds where neither run was noisy (others <= {NOISY:.0%} of a core): "
        f"{cost['quiet_rounds']} of {len(ratios)}"
        + (
            f", median on / off **{cost['quiet_median_ratio']:.3f}**"
            if isinstance(cost["quiet_median_ratio"], float)
            else ""
        ),
        "- router CPU per response (CPU time of the router over the run / responses): "
        + (
            f"median of the per-round off / on ratios **{cpu_ratio:.3f}**, i.e. accounting "
            f"takes {1 - cpu_ratio:.1%} of the router's CPU per response"
            if isinstance(cpu_ratio, float)
            else "-"
        )
        + "; steadier than req/s when the router did not get a whole core, but it still "
        "moves with the machine's speed (another VM on the host)",
        f"- latency, metrics on / off: p50 {fmt_us(on.median('50'))} / "
        f"{fmt_us(off.median('50'))}, p99 {fmt_us(on.median('99'))} / "
        f"{fmt_us(off.median('99'))}; router CPU {fmt_pct(on.median_cpu('proxy_cpu'))} / "
        f"{fmt_pct(off.median_cpu('proxy_cpu'))}",
    ]
    if nginx is not None:
        base = nginx.median("rps")
        lines.append(
            f"- ratio to nginx: router {on.median('rps') / base:.2f}, router-nometrics "
            f"{off.median('rps') / base:.2f}"
        )
    scrapes = [s for r in on.runs for s in (r.scrapes or []) if 0 <= s.at <= args.duration]
    if scrapes:
        ms = sorted(s.seconds * 1e3 for s in scrapes)
        counted = [(r.metrics_counted, r.requests) for r in on.runs if r.scrapes]
        lines.append(
            f"- GET /metrics under load (router, {args.scrapes} per measured run): "
            f"{len(scrapes)} scrapes, all {', '.join(sorted({str(s.status) for s in scrapes}))}"
            f", {statistics.median(s.size for s in scrapes):,.0f} bytes, answered in "
            f"{statistics.median(ms):.1f} ms (median; max {ms[-1]:.1f} ms) while wrk kept "
            f"{args.connections} connections busy. router_requests_total grew by "
            + ", ".join(f"{c:,}" if c is not None else "?" for c, _ in counted)
            + " over the measured runs (wrk received "
            + ", ".join(f"{n:,}" for _, n in counted)
            + "): every response counted."
        )
    idle = on.idle_scrapes
    if idle:
        cpu_ms = idle["cpu_ms_per_scrape"]
        lines.append(
            f"- one scrape of the idle router: {cpu_ms:.2f} ms of router CPU "
            f"({idle['scrapes']:.0f} in a row; answered in {idle['median_ms']:.1f} ms), "
            f"i.e. {cpu_ms / 15e3:.3%} of a core at Prometheus' default 15 s interval"
        )
    lines.append(
        "- router-nometrics: `metrics: {enabled: false}` (per-request accounting is a no-op, "
        "GET /metrics answered 404, checked before the runs); otherwise the same config and "
        "load as router. The two swap places every other round; the per-round ratio compares "
        "runs a few seconds apart, so its median is the figure to read on a noisy machine."
    )
    return lines


def _cpu_per_response(r: WrkResult) -> str:
    return f"{r.proxy_cpu / r.rps * 1e6:.1f} us" if r.proxy_cpu and r.rps else "-"


def render_redis(targets: list[Target], nginx_rps: float | None) -> list[str]:
    """The Redis store section: throughput against the memory store (issue 3: >= 0.9)
    and Redis commands per cached request (issue 3: 0)."""
    rr = next((t for t in targets if t.name == "router-redis" and t.runs), None)
    if rr is None:
        return []
    mem = next((t for t in targets if t.name == "router" and t.runs), None)
    lines = ["", "### Redis store (issue 3)", ""]
    rps = rr.median("rps")
    if mem is not None:
        ratio = rps / mem.median("rps")
        # Rounds are interleaved and the two routers run back to back in each, so the
        # per-round ratios show how much of the difference is drift.
        per_round = ", ".join(
            f"{a.rps / b.rps:.2f}" for a, b in zip(rr.runs, mem.runs, strict=False)
        )
        lines.append(
            f"- router-redis / router (memory): **{ratio:.2f}** (medians {rps:,.0f} / "
            f"{mem.median('rps'):,.0f} req/s; per round: {per_round}); target >= 0.9: "
            f"{'ok' if ratio >= 0.9 else 'MISSED'}"
        )
    if nginx_rps:
        lines.append(f"- router-redis / nginx: {rps / nginx_rps:.2f}")
    requests = sum(r.requests for r in rr.runs)
    merged: Counter[str] = Counter()
    for r in rr.runs:
        merged.update(r.redis_commands or {})
    commands = sum(merged.values())
    # Timer-driven commands (the leader lease renewal every leader_ttl/3, the pub/sub
    # keepalive PING after 5 s of silence) follow the run's duration, not its requests:
    # MONITOR tells them apart; anything else would be caused by requests.
    causes: dict[str, Counter[str]] = {}
    for r in rr.runs:
        for cause, counts in (r.redis_monitor or {}).items():
            causes.setdefault(cause, Counter()).update(counts)
    other = sum(causes.get(OTHER, Counter()).values())
    lines.append(
        f"- Redis commands per cached request: **{commands / max(requests, 1):.4f}** "
        f"({commands:,} commands over {requests:,} requests in {len(rr.runs)} measured "
        f"runs: {fmt_commands(dict(merged))})"
    )
    lines.append(
        "- by cause (MONITOR): "
        + "; ".join(f"{k}: {fmt_commands(dict(v))}" for k, v in causes.items())
        + f". Caused by requests (not a timer): **{other}** commands; target 0: "
        f"{'ok' if other == 0 else 'MISSED'}"
    )
    for i, r in enumerate(rr.runs, 1):
        monitored = sum(sum(v.values()) for v in (r.redis_monitor or {}).values())
        lines.append(
            f"  - run {i}: {r.requests:,} requests, {r.redis_assignments} assignments in "
            f"Redis before it; commands during the run: {fmt_commands(r.redis_commands or {})}"
            f" (total_commands_processed: {r.redis_commands_total}; MONITOR saw {monitored});"
            f" during its warmup: {fmt_commands(r.redis_warmup_commands or {})}; "
            f"redis-server CPU {fmt_pct(r.redis_cpu)}"
        )
        for sample in r.redis_monitor_samples or []:
            lines.append(f"    - other: `{sample}`")
    lines.append(
        f"- first warmup (Redis empty before it: it places every session): "
        f"{fmt_commands(rr.redis_first_warmup or {})}"
    )
    lines.append(
        f"- Redis clients at the end (CLIENT LIST): "
        f"{', '.join(f'{n} x{c}' for n, c in sorted(Counter(rr.redis_client_names).items()))}"
    )
    lines.append(
        "Counted with `INFO stats commandstats clients` right before and after each "
        "measured run (after its warmup: every session already placed and cached), minus "
        "this script's own commands (its INFO, HLEN, CLIENT LIST, ECHO). MONITOR runs "
        "during each measured run on its own connection: commands on `bench:leader*` keys "
        "are the leader lease (renewed every leader_ttl/3, a script with GET + PEXPIRE "
        "inside), a PING on the subscribed connection is the store's pub/sub keepalive "
        "(after 5 s without a message), SMEMBERS of `bench:drained` is the drainer picking up "
        "drains made through other routers (once a second); all come from timers, whatever "
        "the request rate; so do SET / MGET of `bench:workers:*` (with `workers: N`, the "
        "workers' counters for /metrics, once a second)."
    )
    return lines


def render_workers(
    args: argparse.Namespace, targets: list[Target], nginx_rps: float | None
) -> list[str]:
    """The ``workers: 2`` section: against nginx, against one worker with the same store
    (router-redis) and the memory store, and how wrk's connections spread over workers."""
    w = next((t for t in targets if t.name == WORKERS2 and t.runs), None)
    if w is None:
        return []
    rps = w.median("rps")
    lines = ["", "### `listen.workers: 2` (Redis store)", ""]
    ratios = [f"router-workers2 / nginx: **{rps / nginx_rps:.2f}**" if nginx_rps else ""]
    for name in ("router-redis", "router"):
        other = next((t for t in targets if t.name == name and t.runs), None)
        if other is not None:
            per_round = ", ".join(
                f"{a.rps / b.rps:.2f}" for a, b in zip(w.runs, other.runs, strict=False)
            )
            ratios.append(
                f"router-workers2 / {name} (1 worker): {rps / other.median('rps'):.2f} "
                f"(per round {per_round})"
            )
    lines.append("- " + "; ".join(r for r in ratios if r))
    shares = [r.worker_cpu for r in w.runs if r.worker_cpu]
    if shares:
        per_run = "; ".join(" / ".join(fmt_pct(c) for c in s) for s in shares)
        masters = ", ".join(fmt_pct(r.master_cpu) for r in w.runs if r.worker_cpu)
        lines.append(
            f"- CPU per worker during the measured runs: {per_run} (master: {masters}); "
            f"the same `wrk -t{args.threads} -c{args.connections}` as every other row: the "
            "kernel hashes each connection to one worker's socket (SO_REUSEPORT), so with "
            f"{args.connections} connections the split is rarely even"
        )
    causes: dict[str, Counter[str]] = {}
    for r in w.runs:
        for cause, counts in (r.redis_monitor or {}).items():
            causes.setdefault(cause, Counter()).update(counts)
    if causes:
        by_requests = sum(causes.get(OTHER, Counter()).values())
        lines.append(
            "- Redis commands during the measured runs, by cause (MONITOR): "
            + "; ".join(f"{k}: {fmt_commands(dict(v))}" for k, v in causes.items())
            + f". Caused by requests (not a timer): **{by_requests}**"
        )
    lines.append(
        "- 2 cores for wrk, the backend nginx, redis-server and both workers: a second "
        "worker can only help if the first one was the bottleneck and a core is left over; "
        "on this machine the figure shows what a second worker costs or gains, not how it "
        "scales on a larger one"
    )
    return lines


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--duration", type=float, default=10, help="seconds per measured run (10)")
    p.add_argument("--warmup", type=float, default=2, help="seconds of warmup before each run (2)")
    p.add_argument("--connections", type=int, default=32, help="wrk -c (32)")
    p.add_argument("--threads", type=int, default=1, help="wrk -t (1)")
    p.add_argument("--sessions", type=int, default=1000, help="distinct X-Session-Id values (1000)")
    p.add_argument(
        "--repeats", type=int, default=2, help="interleaved rounds; medians reported (2)"
    )
    p.add_argument(
        "--targets",
        default=",".join(ALL_TARGETS),
        help="comma-separated subset of: direct (wrk to backend b1), nginx, haproxy, "
        "router (memory store), router-nometrics (the same, metrics: {enabled: false}), "
        "router-redis (Redis store; starts its own redis-server), router-workers2 "
        "(listen.workers: 2, Redis store, its own redis-server); default: all",
    )
    p.add_argument("--out-dir", type=Path, default=BENCH_DIR / "out", help="bench/out")
    add_quiet_args(p)
    p.add_argument(
        "--scrapes",
        type=int,
        default=1,
        help="GET /metrics this many times during each measured run of a router with "
        "metrics on (besides once before and once after it); 0: none under load (1)",
    )
    p.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (configs, logs)")
    args = p.parse_args(argv)
    names = [n.strip() for n in args.targets.split(",") if n.strip()]
    unknown = sorted(set(names) - set(ALL_TARGETS))
    if unknown:
        p.error(f"unknown targets: {', '.join(unknown)}")
    args.target_names = [n for n in ALL_TARGETS if n in names]  # fixed order
    if args.duration <= 0 or args.warmup < 0 or args.repeats < 1 or args.sessions < 1:
        p.error("--duration and --repeats must be positive, --sessions >= 1, --warmup >= 0")
    if args.scrapes < 0:
        p.error("--scrapes must be >= 0")
    return args


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


def start_everything(
    args: argparse.Namespace, tmp: Path, procs: Processes
) -> tuple[list[Target], int]:
    """Start the backends and every proxy; return the targets and the backends' status port."""
    want = set(args.target_names)
    if "haproxy" in want and shutil.which("haproxy") is None:
        print("haproxy not installed: skipping that row", file=sys.stderr)
        want.discard("haproxy")
    for name in ("router-redis", WORKERS2):
        if name in want and shutil.which("redis-server") is None:
            print(f"redis-server not installed: skipping the {name} row", file=sys.stderr)
            want.discard(name)
    *backend_ports, status_port = free_ports(len(BACKENDS) + 1)
    nginx_port, haproxy_port, router_port, admin_port = free_ports(4)
    redis_router_port, redis_admin_port, redis_port = free_ports(3)
    nometrics_port, nometrics_admin_port = free_ports(2)
    workers_port, workers_admin_port, workers_redis_port = free_ports(3)

    conf = tmp / "backend.conf"
    conf.write_text(backend_nginx_conf(tmp, backend_ports, status_port))
    backend = procs.start(
        "backend nginx",
        [
            "nginx",
            "-p",
            str(tmp / "backend"),
            "-c",
            str(conf),
            "-e",
            str(tmp / "backend" / "error.log"),
        ],
        tmp / "backend.out",
    )
    for port in backend_ports:
        wait_http(procs, port, "/ping", "backend nginx")

    targets: list[Target] = []
    if "direct" in want:
        targets.append(Target("direct", "backend direct (nginx b1)", backend_ports[0], backend))
    if "nginx" in want:
        conf = tmp / "nginx-proxy.conf"
        conf.write_text(proxy_nginx_conf(tmp, nginx_port, backend_ports))
        prefix = tmp / "nginx-proxy"
        proc = procs.start(
            "nginx proxy",
            ["nginx", "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")],
            tmp / "nginx-proxy.out",
        )
        wait_http(procs, nginx_port, "/ping", "nginx proxy")
        targets.append(
            Target("nginx", "nginx 1 worker, hash consistent, keepalive", nginx_port, proc)
        )
    if "haproxy" in want:
        conf = tmp / "haproxy.cfg"
        conf.write_text(haproxy_conf(haproxy_port, backend_ports))
        proc = procs.start("haproxy", ["haproxy", "-db", "-f", str(conf)], tmp / "haproxy.out")
        wait_http(procs, haproxy_port, "/ping", "haproxy")
        targets.append(
            Target("haproxy", "HAProxy 1 thread, hash-type consistent", haproxy_port, proc)
        )
    if "router" in want:
        proc = start_router(procs, tmp, "router", router_port, admin_port, backend_ports)
        targets.append(
            Target(
                "router",
                "wa-router (generic profile, memory store)",
                router_port,
                proc,
                admin_port=admin_port,
                metrics=True,
            )
        )
    if "router-nometrics" in want:
        proc = start_router(
            procs, tmp, "router-nometrics", nometrics_port, nometrics_admin_port, backend_ports,
            metrics=False,
        )  # fmt: skip
        targets.append(
            Target(
                "router-nometrics",
                "wa-router (generic profile, memory store), metrics off",
                nometrics_port,
                proc,
                admin_port=nometrics_admin_port,
            )
        )
    if "router-redis" in want:
        # Its own redis-server: fresh (no assignment yet: the first warmup places every
        # session), appendonly as in production, and no client but the router and the probe.
        redis = procs.start("redis-server", redis_args(tmp, redis_port), tmp / "redis.log")
        wait_redis(procs, redis_port)
        probe = RedisProbe(redis_port)
        proc = start_router(
            procs, tmp, "router-redis", redis_router_port, redis_admin_port, backend_ports,
            redis_port=redis_port,
        )  # fmt: skip
        targets.append(
            Target(
                "router-redis",
                "wa-router (generic profile, Redis store)",
                redis_router_port,
                proc,
                redis=probe,
                redis_proc=redis,
                redis_port=redis_port,
                admin_port=redis_admin_port,
                metrics=True,
            )
        )
    if WORKERS2 in want:
        # listen.workers: 2 needs store.url: the Redis store, against a redis-server of its
        # own (same settings as router-redis'). The workers share the port (SO_REUSEPORT):
        # the kernel spreads wrk's connections over them by a hash of the address pair.
        # Only worker 0 serves the admin port; it adds the other workers' counters, which
        # they publish through Redis once a second, so its /metrics lags by up to a second
        # and is not scraped for this row (the check that it counted every response would
        # fail on the lag, not on the router).
        redis = procs.start(
            "redis-server (workers2)",
            redis_args(tmp / "workers2", workers_redis_port),
            tmp / "redis-workers2.log",
        )
        wait_redis(procs, workers_redis_port)
        probe = RedisProbe(workers_redis_port)
        proc = start_router(
            procs, tmp, WORKERS2, workers_port, workers_admin_port, backend_ports,
            redis_port=workers_redis_port, workers=2,
        )  # fmt: skip
        targets.append(
            Target(
                WORKERS2,
                "wa-router, `workers: 2` (generic profile, Redis store)",
                workers_port,
                proc,
                redis=probe,
                redis_proc=redis,
                redis_port=workers_redis_port,
                admin_port=workers_admin_port,
                workers=2,
            )
        )
    return targets, status_port


def start_router(
    procs: Processes,
    tmp: Path,
    name: str,
    port: int,
    admin_port: int,
    backend_ports: list[int],
    redis_port: int | None = None,
    metrics: bool = True,
    workers: int = 1,
) -> Proc:
    conf = tmp / f"{name}.yaml"
    conf.write_text(router_conf(port, admin_port, backend_ports, redis_port, metrics, workers))
    proc = procs.start(
        name,
        [sys.executable, "-m", "router", "run", "-c", str(conf)],
        tmp / f"{name}.log",
        cwd=REPO,
    )
    wait_http(procs, port, "/healthz", name)
    if workers > 1:
        wait_listeners(procs, port, workers, name)
        # Each new connection lands on one worker or the other: enough of them that every
        # worker has answered /readyz at least once, very likely.
        for _ in range(8 * workers):
            wait_http(procs, port, "/readyz", f"{name} (readiness)")
    wait_http(procs, port, "/readyz", f"{name} (readiness)")
    return proc


def run_once(
    args: argparse.Namespace,
    t: Target,
    procs: Processes,
    backend: Proc,
    status_port: int,
    failures: list[str],
    rnd: int,
) -> tuple[WrkResult, str]:
    """Wait for a quiet machine, warm up, then one measured wrk run against ``t``."""
    procs.check_alive()
    quiet = wait_quiet(procs, args.wait_quiet)  # also lets the last run settle
    probe = t.redis
    warm_start = probe.snapshot() if probe is not None else None
    if args.warmup > 0:
        warm, out = run_wrk(wrk_argv(args, t.url, args.warmup), args.warmup)
        t.warmups.append(warm)
        if warm.errors:
            failures.append(f"{t.name}: warmup {rnd}: {_errors_text(warm)}\n{out}")
    procs.check_alive()
    proxy_pid = None if t.proc is None or t.proc is backend else t.proc.pid
    redis_pid = t.redis_proc.pid if t.redis_proc is not None else None
    assignments = None
    if probe is not None:
        assignments = probe.command("HLEN", REDIS_PREFIX + "assignments")
    accepts0, served0 = backend_counters(status_port)
    scrape_port = t.admin_port if t.metrics else None
    pre_t0 = time.monotonic()
    pre = scrape_metrics(scrape_port, pre_t0) if scrape_port is not None else None
    monitor = None
    if probe is not None and t.redis_port:
        monitor = RedisMonitor(t.redis_port)
        probe.sent.update(["client|setname", "monitor"])  # the monitor's: ours too
    redis0 = probe.snapshot() if probe is not None else None
    before = CpuSnapshot.take(proxy_pid, backend.pid, redis_pid)
    worker_pids = tree_pids(proxy_pid)[1:] if proxy_pid is not None and t.workers > 1 else []
    worker_cpu0 = [cpu_seconds_own(p) for p in [proxy_pid, *worker_pids] if p is not None]
    scraper = (
        LoadScraper(scrape_port, args.duration, args.scrapes)
        if scrape_port is not None and args.scrapes > 0
        else None
    )
    try:
        res, out = run_wrk(wrk_argv(args, t.url, args.duration), args.duration)
    finally:
        under_load, scrape_errors = scraper.join() if scraper is not None else ([], [])
    after = CpuSnapshot.take(proxy_pid, backend.pid, redis_pid)
    used = after.usage_since(before)
    if worker_pids and proxy_pid is not None:
        wall = after.wall - before.wall
        worker_cpu1 = [cpu_seconds_own(p) for p in [proxy_pid, *worker_pids]]
        shares = [(b - a) / wall for a, b in zip(worker_cpu0, worker_cpu1, strict=True)]
        res.master_cpu, res.worker_cpu = shares[0], shares[1:]
    if scrape_port is not None and pre is not None:
        t0 = scraper.t0 if scraper is not None else before.wall
        post = scrape_metrics(scrape_port, t0)
        pre.at += pre_t0 - t0  # relative to the run's start, like the others
        res.scrapes = [pre, *under_load, post]
        if pre.responses is not None and post.responses is not None:
            res.metrics_counted = post.responses - pre.responses
        failures += [f"{t.name}: round {rnd}: {e}" for e in scrape_errors]
        bad = [s for s in res.scrapes if s.status != 200 or s.responses is None]
        if bad:
            failures.append(
                f"{t.name}: round {rnd}: GET /metrics answered {bad[0].status} "
                f"({bad[0].size} bytes, router_requests_total: {bad[0].responses})"
            )
        elif res.metrics_counted is not None and res.metrics_counted < res.requests:
            failures.append(
                f"{t.name}: round {rnd}: router_requests_total grew by {res.metrics_counted:,} "
                f"during the measured run, but wrk received {res.requests:,} responses"
            )
    redis1 = probe.snapshot() if probe is not None else None
    if probe is not None and monitor is not None:
        clients = client_list(probe)
        mine = {c.get("addr", "") for c in clients if c.get("name", "").startswith("bench-")}
        subscribers = {c.get("addr", "") for c in clients if "P" in c.get("flags", "")}
        res.redis_monitor, res.redis_monitor_samples = classify_monitor(
            monitor.stop(probe), mine, subscribers
        )
    accepts1, served1 = backend_counters(status_port)
    res.backend_accepts, res.backend_requests = accepts1 - accepts0, served1 - served0
    res.proxy_cpu = used["target"] if proxy_pid is not None else None
    res.backend_cpu, res.wrk_cpu = used["backend"], used["wrk"]
    res.others_cpu, res.others_before = used["others"], quiet
    if redis0 is not None and redis1 is not None and warm_start is not None:
        res.redis_commands = redis1.since(redis0)
        res.redis_commands_total = redis1.total_since(redis0)
        res.redis_warmup_commands = redis0.since(warm_start)
        if t.redis_first_warmup is None:
            t.redis_first_warmup = res.redis_warmup_commands
        res.redis_assignments = assignments if isinstance(assignments, int) else None
        res.redis_clients = redis1.clients
        res.redis_cpu = used["redis"]
        n = sum(res.redis_commands.values())
        causes = "; ".join(
            f"{k}: {fmt_commands(v)}" for k, v in (res.redis_monitor or {}).items()
        )
        print(
            f"  round {rnd}/{args.repeats} {t.name}: Redis commands during the warmup: "
            f"{fmt_commands(res.redis_warmup_commands)}; during the measured run: "
            f"{fmt_commands(res.redis_commands)} ({n / max(res.requests, 1):.4f} per request; "
            f"total_commands_processed says {res.redis_commands_total}; MONITOR: {causes}); "
            f"{assignments} assignments in Redis, {res.redis_clients} clients, "
            f"redis-server CPU {fmt_pct(res.redis_cpu)}",
            file=sys.stderr,
            flush=True,
        )
    print(
        f"  round {rnd}/{args.repeats} {t.name:12s} {res.rps:>10,.0f} req/s  "
        f"p50 {fmt_us(res.latency_us['50']):>9s}  p99 {fmt_us(res.latency_us['99']):>9s}"
        f"  errors {res.errors}  (CPU: proxy {fmt_pct(res.proxy_cpu)}, backend "
        f"{fmt_pct(res.backend_cpu)}, wrk {fmt_pct(res.wrk_cpu)}, "
        f"others {fmt_pct(res.others_cpu)}; backends accepted "
        f"{res.backend_accepts} connections)",
        file=sys.stderr,
        flush=True,
    )
    if res.worker_cpu is not None:
        print(
            f"  round {rnd}/{args.repeats} {t.name}: CPU per worker "
            f"{', '.join(fmt_pct(c) for c in res.worker_cpu)} (master {fmt_pct(res.master_cpu)})"
            f" with {args.connections} connections",
            file=sys.stderr,
            flush=True,
        )
    if res.scrapes is not None:
        during = [s for s in res.scrapes if 0 <= s.at <= args.duration]
        print(
            f"  round {rnd}/{args.repeats} {t.name}: /metrics scraped {len(during)} time(s) "
            f"under load ({', '.join(f'{s.seconds * 1e3:.1f} ms' for s in during) or '-'}; "
            f"{res.scrapes[-1].size:,} bytes); router_requests_total grew by "
            f"{'?' if res.metrics_counted is None else f'{res.metrics_counted:,}'} "
            f"(wrk received {res.requests:,}, the backends served {res.backend_requests:,})",
            file=sys.stderr,
            flush=True,
        )
    procs.check_alive()
    return res, out


def measure(
    args: argparse.Namespace,
    targets: list[Target],
    procs: Processes,
    backend: Proc,
    status_port: int,
) -> list[str]:
    failures: list[str] = []
    for t in targets:
        failures += sticky_check(t, args.sessions)
    for t in targets:
        failures += metrics_check(t)
    for rnd in range(1, args.repeats + 1):
        for t in round_order(targets, rnd):
            for attempt in range(1 + args.noisy_retries):
                res, out = run_once(args, t, procs, backend, status_port, failures, rnd)
                if res.errors:
                    failures.append(f"{t.name}: round {rnd}: {_errors_text(res)}\n{out}")
                if (res.others_cpu or 0) <= NOISY or attempt == args.noisy_retries:
                    break
                t.discarded.append(res)
                print(f"  (noisy: {res.others_cpu:.0%} others; running it again)", file=sys.stderr)
            t.runs.append(res)
    for t in targets:
        failures += sticky_check(t, args.sessions)  # same placements after the load?
        if t.redis is not None:  # who was connected to the router's Redis
            listing = t.redis.command("CLIENT", "LIST")
            names = re.findall(r"(?:^| )name=(\S*)", listing if isinstance(listing, str) else "")
            t.redis_client_names = [n or "(no name)" for n in names]
            strangers = [n for n in names if n not in ("wa-router", "bench-probe", "bench-monitor")]
            if strangers:
                failures.append(f"{t.name}: unexpected Redis clients: {strangers}")
    return failures


def round_order(targets: list[Target], rnd: int) -> list[Target]:
    """The targets in round ``rnd``'s order: ``router`` and ``router-nometrics`` swap
    places every other round (ABBA), so that neither always runs first: the difference
    measured is a few percent, of the order of the drift between two runs."""
    order = list(targets)
    names = [t.name for t in order]
    if rnd % 2 == 0 and all(n in names for n in METRICS_PAIR):
        i, j = (names.index(n) for n in METRICS_PAIR)
        order[i], order[j] = order[j], order[i]
    return order


IDLE_SCRAPES = 100  # CPU time is counted in ticks (10 ms): enough to resolve 0.1 ms


def metrics_check(t: Target) -> list[str]:
    """A router with metrics on must serve /metrics with router_requests_total (the sticky
    check's requests are in it); with metrics off, /metrics must answer 404 (the switch
    took effect). For the former, also the cost of a scrape on the idle router: its CPU
    time over ``IDLE_SCRAPES`` scrapes in a row."""
    if t.name not in ROUTERS or t.admin_port is None or t.proc is None or t.workers > 1:
        return []  # workers: only worker 0 serves the admin port, its own counts only
    try:
        if not t.metrics:
            status, _, _ = http_get(t.admin_port, "/metrics")
            if status != 404:
                return [f"{t.name}: metrics are off, but GET /metrics answered {status}"]
            return []
        cpu0, t0 = cpu_seconds(t.proc.pid), time.monotonic()
        scrapes = [scrape_metrics(t.admin_port, t0) for _ in range(IDLE_SCRAPES)]
        cpu = cpu_seconds(t.proc.pid) - cpu0
    except (OSError, http.client.HTTPException) as e:
        return [f"{t.name}: GET /metrics: {e}"]
    bad = [s for s in scrapes if s.status != 200 or not s.responses]
    if bad:
        return [
            f"{t.name}: GET /metrics answered {bad[0].status} with router_requests_total "
            f"{bad[0].responses} after the sticky check's requests"
        ]
    t.idle_scrapes = {
        "scrapes": IDLE_SCRAPES,
        "cpu_ms_per_scrape": cpu / IDLE_SCRAPES * 1e3,
        "median_ms": statistics.median(s.seconds for s in scrapes) * 1e3,
        "bytes": statistics.median(s.size for s in scrapes),
    }
    return []


def _errors_text(r: WrkResult) -> str:
    sock = ", ".join(f"{k} {v}" for k, v in r.socket_errors.items() if v) or "none"
    return f"{r.non2xx} non-2xx responses, socket errors: {sock}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for tool in ("nginx", "wrk"):
        if shutil.which(tool) is None:
            print(f"FAIL: {tool} is not installed", file=sys.stderr)
            return 2
    started = dt.datetime.now(dt.UTC)
    stamp = started.strftime("%Y%m%d-%H%M%S")
    tmp = Path(tempfile.mkdtemp(prefix="wa-router-bench-"))
    tmp.chmod(0o755)  # nginx workers run as "nobody" when started as root
    procs = Processes()
    targets: list[Target] = []
    failures: list[str] = []
    rss: dict[str, dict[str, int]] = {}
    logs = [tmp / f"{name}.log" for name in ROUTERS]  # copied to out/, tails on failure
    redis_logs = [tmp / "redis.log", tmp / "redis-workers2.log"]
    try:
        with signals_interrupt():
            info = machine_info()  # before starting: the git commit the router runs
            print(f"temp dir {tmp}; starting backends and proxies", file=sys.stderr, flush=True)
            targets, status_port = start_everything(args, tmp, procs)
            routers = [t for t in targets if t.name in ROUTERS and t.proc is not None]
            for t in routers:
                assert t.proc is not None
                rss[t.name] = {f"start_{k}": v for k, v in tree_memory_kib(t.proc.pid).items()}
            failures = measure(args, targets, procs, procs.procs[0], status_port)
            for t in routers:
                assert t.proc is not None
                rss[t.name].update(
                    {f"end_{k}": v for k, v in tree_memory_kib(t.proc.pid).items()}
                )
            report = render(args, targets, info, started, rss, failures)
            print(report)
            args.out_dir.mkdir(parents=True, exist_ok=True)
            md = args.out_dir / f"proxy-{stamp}.md"
            md.write_text(report)
            raw = {
                "date": started.isoformat(),
                "command": [sys.executable, *sys.argv],
                "wrk": wrk_argv(args, f"http://{HOST}:PORT{REQUEST_PATH}", args.duration),
                "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                "machine": info,
                "router_memory_kib": rss,
                "targets": {
                    t.name: {
                        "label": t.label,
                        "median_rps": t.median("rps") if t.runs else None,
                        "errors": t.errors(),
                        "runs": [asdict(r) for r in t.runs],
                        "warmups": [asdict(r) for r in t.warmups],
                        "discarded_noisy_runs": [asdict(r) for r in t.discarded],
                        "placement_sample": t.placement,
                        "redis_client_names": t.redis_client_names,
                        "redis_first_warmup_commands": t.redis_first_warmup,
                        "idle_scrapes": t.idle_scrapes,
                    }
                    for t in targets
                },
                "metrics_cost": metrics_cost(targets),
                "failures": failures,
            }
            (args.out_dir / f"proxy-{stamp}.json").write_text(json.dumps(raw, indent=2) + "\n")
            for log in logs:
                if log.exists() and log.stat().st_size:
                    shutil.copy(log, args.out_dir / f"proxy-{stamp}-{log.name}")
            print(f"written: {md} and {md.with_suffix('.json')}", file=sys.stderr)
    except BenchError as e:
        failures.append(str(e))
    except KeyboardInterrupt:
        failures.append("interrupted")
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not skip cleanup
        for t in targets:
            if t.redis is not None:
                t.redis.close()
        code = finish(procs, failures, [*logs, *redis_logs], tmp, args.keep_tmp, 60)
    return code


if __name__ == "__main__":
    sys.exit(main())
