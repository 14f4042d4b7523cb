"""The run skeleton of a benchmark: its temp dir and processes, starting nginx and routers
from config text, one measured wrk run with the CPU each part used (again when noisy), and
``run_main``: the body with cleanup, failure report and ``bench/out/<name>-<stamp>.{md,json}``."""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import os
import shlex
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.lib import OUT_DIR, REPO
from bench.lib.admin import backend_counters
from bench.lib.cpu import CpuSnapshot
from bench.lib.noisy import add_quiet_args, measure_quietly
from bench.lib.procs import (
    BenchError,
    Proc,
    Processes,
    finish,
    router_argv,
    signals_interrupt,
    wait_http,
    wait_listeners,
)
from bench.lib.report import machine_info, write_report
from bench.lib.wrk import WrkResult, run_wrk


@dataclass
class Bench:
    """One benchmark run: its temp dir, its processes, what went wrong."""

    name: str
    args: argparse.Namespace
    tmp: Path
    procs: Processes = field(default_factory=Processes)
    failures: list[str] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)  # tails printed on failure
    started: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))
    info: dict[str, str] = field(default_factory=dict)  # machine_info()
    tail_lines: int = 40  # of each log, on failure
    copy_logs: list[Path] = field(default_factory=list)  # into the out dir with the report

    def start_nginx(self, name: str, conf: str, check_port: int, path: str = "/") -> Proc:
        """An nginx (master + 1 worker) from ``conf`` (see ``configs.nginx_conf``); waits
        until GET ``path`` on ``check_port`` answers 200."""
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
        wait_http(self.procs, check_port, path, name)
        return proc

    def stop(self, proc: Proc) -> None:
        """Stop one process (its group) before the end of the run."""
        for problem in self.procs.stop(proc):
            self.failures.append(f"cleanup: {problem}")

    def start_router(
        self, name: str, conf: str, port: int, timeout: float = 60.0, workers: int = 1,
        pure: bool = False,
    ) -> Proc:
        """``python -m router run -c <conf>`` in the repo root (this checkout's router/);
        waits for /healthz and /readyz on the proxy port (with ``workers``, for every
        worker to listen). ``pure``: ``WA_ROUTER_PURE=1``, the data path as Python even
        where it is compiled (``router.build``)."""
        conf_path = self.tmp / f"{name}.yaml"
        conf_path.write_text(conf)
        log = self.tmp / f"{name}.log"
        self.logs.append(log)
        env = {**os.environ, "WA_ROUTER_PURE": "1"} if pure else None
        proc = self.procs.start(name, router_argv(conf_path), log, cwd=REPO, env=env)
        wait_http(self.procs, port, "/healthz", name, timeout=timeout)
        if workers > 1:
            wait_listeners(self.procs, port, workers, name)
            # Each new connection lands on one worker or another: enough of them that
            # every worker has answered /readyz at least once, very likely.
            for _ in range(8 * workers):
                wait_http(self.procs, port, "/readyz", f"{name} (readiness)", timeout=timeout)
        wait_http(self.procs, port, "/readyz", f"{name} (readiness)", timeout=timeout)
        return proc


@dataclass
class Measured:
    """One wrk run and the CPU each part used during it (cores: CPU-seconds per second)."""

    wrk: WrkResult
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
        """Requests per second (wrk's)."""
        return self.wrk.rps

    def p(self, pct: str) -> float:
        """Latency percentile ``pct`` ("50", "99"...), in microseconds."""
        return self.wrk.latency_us[pct]

    def as_dict(self) -> dict[str, Any]:
        """For the JSON report, with the wrk command as one string."""
        d = dataclasses.asdict(self)
        d["command"] = shlex.join(self.argv)
        return d


def measure(
    bench: Bench,
    argv: list[str],
    duration: float,
    proxy: Proc | None,
    backend: Proc,
    what: str,
    retries: bool = True,
    status_port: int | None = None,
) -> tuple[Measured, str]:
    """One wrk run (``argv``) on a quiet machine with the CPU of the proxy (None: no
    proxy), the backend, wrk and everybody else, again when noisy (not for warmups:
    ``retries`` false; see ``noisy.measure_quietly``). Errors (non-2xx, socket errors)
    are added to the bench's failures."""
    proxy_pid = proxy.pid if proxy is not None and proxy is not backend else None

    def once(quiet: float, attempt: int) -> tuple[Measured, str]:
        counters0 = backend_counters(status_port) if status_port is not None else None
        idle = [p.pid for p in bench.procs.procs if p.pid not in (proxy_pid, backend.pid)]
        before = CpuSnapshot.take(proxy_pid, backend.pid, idle_pids=idle)
        res, out = run_wrk(argv, duration)
        used = CpuSnapshot.take(proxy_pid, backend.pid, idle_pids=idle).usage_since(before)
        counters1 = backend_counters(status_port) if status_port is not None else None
        bench.procs.check_alive()
        if res.errors:
            bench.failures.append(f"{what}: {res.errors_text()}\n{out}")
        m = Measured(
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
        )
        return m, out

    (m, out), discarded = measure_quietly(
        bench.procs, bench.args, once, lambda r: r[0].others_cpu, what, retries
    )
    if discarded:
        m.extra["discarded_noisy_rps"] = [d.rps for d, _ in discarded]
    return m, out


def common_args(p: argparse.ArgumentParser) -> None:
    """--wait-quiet, --noisy-retries, --out-dir and --keep-tmp."""
    add_quiet_args(p)
    p.add_argument("--out-dir", type=Path, default=OUT_DIR, help="bench/out")
    p.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (configs, logs)")


def run_main(
    name: str,
    args: argparse.Namespace,
    body: Callable[[Bench], tuple[str, dict[str, Any]]],
    tools: tuple[str, ...] = ("nginx", "wrk"),
    tmp_prefix: str | None = None,
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
    tmp = Path(tempfile.mkdtemp(prefix=tmp_prefix or f"wa-router-{name}-bench-"))
    tmp.chmod(0o755)  # nginx workers run as "nobody" when started as root
    bench = Bench(name, args, tmp, started=started)
    try:
        with signals_interrupt():
            bench.info = machine_info()  # before starting: the git commit it runs
            print(f"temp dir {tmp}", file=sys.stderr, flush=True)
            report, raw = body(bench)
            if bench.failures:
                report += f"\n**FAILED**: {len(bench.failures)} problem(s):\n"
                report += "".join(f"- {f.splitlines()[0]}\n" for f in bench.failures)
            print(report)
            raw["failures"] = bench.failures
            write_report(args.out_dir, f"{name}-{stamp}", report, raw, started, args, bench.info)
            for log in bench.copy_logs:
                if log.exists() and log.stat().st_size:
                    shutil.copy(log, args.out_dir / f"{name}-{stamp}-{log.name}")
    except BenchError as e:
        bench.failures.append(str(e))
    except KeyboardInterrupt:
        bench.failures.append("interrupted")
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not skip cleanup
        code = finish(bench.procs, bench.failures, bench.logs, tmp, args.keep_tmp, bench.tail_lines)
    return code
