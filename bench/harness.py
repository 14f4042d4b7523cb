"""Shared plumbing of latency_bench.py, growth_bench.py and stream_bench.py.

Built on proxy_bench's helpers (processes in their own process groups, free ports, wrk
runs and their parsing, CPU accounting, machine info): starting a backend nginx, an nginx
proxy and a wa-router from a config text, one measured wrk run with the CPU each part
used, and ``run_main``, which runs a benchmark body with the cleanup, failure report and
``bench/out/<name>-<timestamp>.{md,json}`` output every script here has.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import proxy_bench as pb  # bench/ is sys.path[0] when a script of it runs

HOST = pb.HOST
BENCH_DIR = pb.BENCH_DIR
REPO = pb.REPO
WRK_DIR = BENCH_DIR / "wrk"


@dataclass
class Bench:
    """One benchmark run: its temp dir, its processes, what went wrong."""

    name: str
    args: argparse.Namespace
    tmp: Path
    procs: pb.Processes = field(default_factory=pb.Processes)
    failures: list[str] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)  # tails printed on failure
    started: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))
    info: dict[str, str] = field(default_factory=dict)  # pb.machine_info()

    def start_nginx(self, name: str, conf: str, check_port: int, path: str = "/") -> pb.Proc:
        """An nginx (master + 1 worker) from ``conf`` (see ``pb._nginx_conf``); waits until
        GET ``path`` on ``check_port`` answers 200."""
        prefix = self.tmp / name
        prefix.mkdir(parents=True, exist_ok=True)
        conf_path = self.tmp / f"{name}.conf"
        conf_path.write_text(conf)
        proc = self.procs.start(
            name,
            ["nginx", "-p", str(prefix), "-c", str(conf_path), "-e", str(prefix / "error.log")],
            self.tmp / f"{name}.out",
        )
        self.logs.append(prefix / "error.log")
        pb.wait_http(self.procs, check_port, path, name)
        return proc

    def stop(self, proc: pb.Proc) -> None:
        """Stop one process (its group) before the end of the run."""
        if proc in self.procs.procs:
            self.procs.procs.remove(proc)
        for problem in pb._stop(proc):
            self.failures.append(f"cleanup: {problem}")

    def start_router(self, name: str, conf: str, port: int, timeout: float = 60.0) -> pb.Proc:
        """``python -m router run -c <conf>`` in the repo root (this checkout's router/);
        waits for /healthz and /readyz on the proxy port."""
        conf_path = self.tmp / f"{name}.yaml"
        conf_path.write_text(conf)
        log = self.tmp / f"{name}.log"
        self.logs.append(log)
        proc = self.procs.start(
            name, [sys.executable, "-m", "router", "run", "-c", str(conf_path)], log, cwd=REPO
        )
        pb.wait_http(self.procs, port, "/healthz", name, timeout=timeout)
        pb.wait_http(self.procs, port, "/readyz", f"{name} (readiness)", timeout=timeout)
        return proc


def router_yaml(
    port: int, admin_port: int, instances: list[tuple[str, int]], extra: str = ""
) -> str:
    """A router config: generic profile (X-Session-Id), memory store, log WARNING,
    metrics on, ``instances`` as (name, port) on 127.0.0.1; ``extra``: more YAML."""
    lines = "\n".join(f"  - {{name: {n}, url: 'http://{HOST}:{p}'}}" for n, p in instances)
    return f"""listen: {{host: {HOST}, port: {port}}}
admin: {{host: {HOST}, port: {admin_port}}}
profile: generic
log: {{level: WARNING}}
{extra}instances:
{lines}
"""


def nginx_conf(prefix: Path, servers: str) -> str:
    return pb._nginx_conf(prefix, servers)


def status_server(port: int) -> str:
    """An nginx server block with stub_status (connections and requests the backends saw)."""
    return f"""    server {{
        listen {HOST}:{port};
        location / {{ stub_status; }}
    }}
"""


@dataclass
class Measured:
    """One wrk run and the CPU each part used during it (cores: CPU-seconds per second)."""

    wrk: pb.WrkResult
    argv: list[str]
    proxy_cpu: float | None
    backend_cpu: float
    wrk_cpu: float
    others_cpu: float
    others_before: float
    # With a stub_status port: connections the backends accepted, requests they served.
    backend_accepts: int | None = None
    backend_requests: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # Our other processes (idle routers and nginx of other rows): not counted in others.
    idle_cpu: float = 0.0

    @property
    def rps(self) -> float:
        return self.wrk.rps

    def p(self, pct: str) -> float:
        return self.wrk.latency_us[pct]

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["command"] = shlex.join(self.argv)
        return d


def measure(
    bench: Bench,
    argv: list[str],
    duration: float,
    proxy: pb.Proc | None,
    backend: pb.Proc,
    what: str,
    retries: bool = True,
    status_port: int | None = None,
) -> tuple[Measured, str]:
    """Wait (``--wait-quiet``) for a quiet machine, then one wrk run (``argv``) with the CPU
    of the proxy (None: no proxy), the backend, wrk and everybody else; run again (up to
    ``--noisy-retries`` times) while other processes took more than 10% of a core during
    it (not for warmups: ``retries`` false). Errors (non-2xx, socket errors) are added to
    the bench's failures."""
    discarded: list[float] = []
    tries = 1 + bench.args.noisy_retries if retries else 1
    for attempt in range(tries):
        m, out = _measure_once(bench, argv, duration, proxy, backend, what, status_port)
        if m.others_cpu <= pb.NOISY or attempt == tries - 1:
            break
        discarded.append(m.rps)
        print(
            f"  ({what}: noisy, {m.others_cpu:.0%} others at {m.rps:,.0f} req/s; again)",
            file=sys.stderr,
            flush=True,
        )
    if discarded:
        m.extra["discarded_noisy_rps"] = discarded
    return m, out


def _measure_once(
    bench: Bench,
    argv: list[str],
    duration: float,
    proxy: pb.Proc | None,
    backend: pb.Proc,
    what: str,
    status_port: int | None,
) -> tuple[Measured, str]:
    bench.procs.check_alive()
    quiet = pb.wait_quiet(bench.procs, bench.args.wait_quiet)
    proxy_pid = proxy.pid if proxy is not None and proxy is not backend else None
    counters0 = pb.backend_counters(status_port) if status_port is not None else None
    idle = [p.pid for p in bench.procs.procs if p.pid not in (proxy_pid, backend.pid)]
    before = pb.CpuSnapshot.take(proxy_pid, backend.pid, idle_pids=idle)
    res, out = pb.run_wrk(argv, duration)
    used = pb.CpuSnapshot.take(proxy_pid, backend.pid, idle_pids=idle).usage_since(before)
    counters1 = pb.backend_counters(status_port) if status_port is not None else None
    bench.procs.check_alive()
    if res.errors:
        bench.failures.append(f"{what}: {_errors_text(res)}\n{out}")
    return (
        Measured(
            wrk=res,
            argv=argv,
            proxy_cpu=used["target"] if proxy_pid is not None else None,
            backend_cpu=used["backend"],
            wrk_cpu=used["wrk"],
            others_cpu=used["others"],
            others_before=quiet,
            backend_accepts=counters1[0] - counters0[0] if counters0 and counters1 else None,
            backend_requests=counters1[1] - counters0[1] if counters0 and counters1 else None,
            idle_cpu=used["idle"],
        ),
        out,
    )


def _errors_text(r: pb.WrkResult) -> str:
    sock = ", ".join(f"{k} {v}" for k, v in r.socket_errors.items() if v) or "none"
    return f"{r.non2xx} non-2xx responses, socket errors: {sock}"


def admin_json(admin_port: int, path: str, timeout: float = 10.0) -> Any:
    status, _, body = pb.http_get(admin_port, path, timeout=timeout)
    if status != 200:
        raise pb.BenchError(f"admin GET {path}: HTTP {status} {body[:200]!r}")
    return json.loads(body)


def metric_value(admin_port: int, name: str) -> float | None:
    """The value of an unlabelled sample ``name`` on the router's admin /metrics."""
    status, _, body = pb.http_get(admin_port, "/metrics", timeout=10.0)
    if status != 200:
        return None
    for line in body.decode(errors="replace").splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def common_args(p: argparse.ArgumentParser) -> None:
    pb.add_quiet_args(p)
    p.add_argument("--out-dir", type=Path, default=BENCH_DIR / "out", help="bench/out")
    p.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (configs, logs)")


def header_lines(title: str, started: dt.datetime, info: dict[str, str]) -> list[str]:
    return [
        f"## {title}, {started.strftime('%Y-%m-%d %H:%M:%S UTC')}",
        "",
        f"- command: `{shlex.join([sys.executable, *sys.argv])}`",
        "- machine: "
        + ", ".join(
            [
                f"{info['nproc']} CPUs ({info['cpu']})",
                info["kernel"],
                info["python"],
                f"nginx {info['nginx']}",
                info["wrk"],
                f"wa-router {info['wa-router']}",
            ]
        ),
    ]


def noisy_note(runs: list[Measured]) -> list[str]:
    worst = max((m.others_cpu for m in runs), default=0.0)
    if worst > pb.NOISY:
        return [
            f"WARNING: other processes used up to {worst:.0%} of a core during measured runs: "
            "rerun on a quiet machine before trusting these numbers."
        ]
    return []


def run_main(
    name: str,
    args: argparse.Namespace,
    body: Callable[[Bench], tuple[str, dict[str, Any]]],
    tools: tuple[str, ...] = ("nginx", "wrk"),
) -> int:
    """Run ``body`` (which returns the markdown report and the raw JSON), write both to
    ``<out-dir>/<name>-<stamp>.{md,json}``, stop every process (also on Ctrl-C / SIGTERM)
    and report failures with log tails. Exit code: 0, 1 (problems), 2 (missing tool)."""
    for tool in tools:
        if shutil.which(tool) is None:
            print(f"FAIL: {tool} is not installed", file=sys.stderr)
            return 2
    started = dt.datetime.now(dt.UTC)
    stamp = started.strftime("%Y%m%d-%H%M%S")
    tmp = Path(tempfile.mkdtemp(prefix=f"wa-router-{name}-bench-"))
    tmp.chmod(0o755)  # nginx workers run as "nobody" when started as root
    bench = Bench(name, args, tmp, started=started)
    try:
        with pb.signals_interrupt():
            info = bench.info = pb.machine_info()  # before starting: the git commit it runs
            print(f"temp dir {tmp}", file=sys.stderr, flush=True)
            report, raw = body(bench)
            if bench.failures:
                report += f"\n**FAILED**: {len(bench.failures)} problem(s):\n"
                report += "".join(f"- {f.splitlines()[0]}\n" for f in bench.failures)
            print(report)
            args.out_dir.mkdir(parents=True, exist_ok=True)
            md = args.out_dir / f"{name}-{stamp}.md"
            md.write_text(report)
            raw = {
                "date": started.isoformat(),
                "command": [sys.executable, *sys.argv],
                "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                "machine": info,
                **raw,
                "failures": bench.failures,
            }
            md.with_suffix(".json").write_text(json.dumps(raw, indent=2) + "\n")
            print(f"written: {md} and {md.with_suffix('.json')}", file=sys.stderr)
    except pb.BenchError as e:
        bench.failures.append(str(e))
    except KeyboardInterrupt:
        bench.failures.append("interrupted")
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not skip cleanup
        code = pb.finish(bench.procs, bench.failures, bench.logs, tmp, args.keep_tmp)
    return code


def wrk_base(connections: int, duration: float, threads: int = 1) -> list[str]:
    return ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration:g}s", "--latency"]


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


def wait_until(check: Callable[[], bool], timeout: float, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
