"""Where the router's CPU goes per request (issue 20): perf on the live process.

    /work/venv/bin/python bench/cpu_profile.py [--duration 8] [--connections 32]
        [--sessions 1000] [--frequency 1999] [--builds compiled,pure] [--out-dir bench/out]

For each build of the data path (compiled with mypyc, and pure Python: ``WA_ROUTER_PURE=1``)
it starts the proxy benchmark's backends (one nginx, three servers) and a router in front of
them (generic profile, memory store, metrics on), saturates it with wrk (``-t1 -c32``, 1,000
sessions in ``X-Session-Id``, as proxy_bench.py) and, during the measured run, samples the
router's process with ``perf record -e cpu-clock -g``. Each sample is put in one bucket by
its call stack, leaf first: kernel time by the system call it serves (write/writev, read,
epoll, other); otherwise the first frame that belongs to a known part: a compiled module of
the data path (mypyc names its C functions after the module), httptools (llhttp and its
Cython callbacks), uvloop, or Python bytecode run by the interpreter
(``_PyEval_EvalFrameDefault``: every pure-Python module, and in the compiled build the code
that is not compiled). C library and interpreter helpers (malloc, dict and string calls)
count for the part that called them. Buckets are reported as shares of the router's samples
and as microseconds of CPU per request (the router's CPU over the run / requests served).
Needs ``perf`` (linux-perf) and root or ``kernel.perf_event_paranoid <= 1``.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

if __name__ == "__main__" and not __package__:  # python bench/x.py: run as python -m bench.x
    os.execv(sys.executable, [sys.executable, "-m", f"bench.{Path(__file__).stem}", *sys.argv[1:]])

from bench.lib import HOST, WRK_DIR
from bench.lib.configs import BACKENDS, backend_nginx_conf, instance_url, router_yaml
from bench.lib.harness import Bench, common_args, measure, run_main
from bench.lib.ports import free_ports
from bench.lib.report import fmt_pct, header_lines
from bench.lib.wrk import LUA_SEED, REQUEST_PATH, wrk_base

BUILDS = ("compiled", "pure")
# The data path's modules by the prefix mypyc gives their C functions (``CPyDef_<module>___``
# and the like), and the bucket each counts in.
MODULE_BUCKETS = {
    "framing": "heads: request serialization, response head (framing.py)",
    "exchange": "exchange bookkeeping (exchange.py)",
    "connection": "client connection (connection.py)",
    "upstream": "upstream connection and pool (upstream.py)",
    "routing": "routing and store lookup (routing.py)",
    "common": "session extraction (sessions/)",
    "extractor": "session extraction (sessions/)",
    "waha": "session extraction (sessions/)",
    "evolution": "session extraction (sessions/)",
    "stats": "metrics (stats.py)",
}
KERNEL_WRITE = "kernel: write/writev (+ loopback delivery)"
KERNEL_READ = "kernel: read"
# Kernel time by the system call it serves, found anywhere in its kernel stack (on loopback
# a write also delivers the bytes to the receiving socket in its softirq).
_SYSCALLS = (
    (re.compile(r"(do_writev|vfs_writev?|ksys_write|sock_write_iter|tcp_sendmsg|__sys_sendto)$"),
     KERNEL_WRITE),
    (re.compile(r"(vfs_readv?|ksys_read|sock_read_iter|tcp_recvmsg|__sys_recvfrom)$"),
     KERNEL_READ),
    (re.compile(r"(ep_poll|do_epoll_wait)$"), "kernel: epoll"),
)
RUNTIME = "CPython runtime: objects, dicts, calls (caller not unwound)"
LIBC = "libc: malloc, memcpy, clock"
# mypyc's C name of a function of module M (its last dotted part): CPyDef_M___f, CPyPy_M___f
_MYPYC = re.compile(r"^CPy(?:Def|Py)_([A-Za-z0-9]+)_")
ORDER = (
    KERNEL_WRITE, KERNEL_READ, "kernel: epoll", "kernel: other", "uvloop",
    "httptools (llhttp + callbacks)", *dict.fromkeys(MODULE_BUCKETS.values()),
    "Python bytecode (interpreted)", RUNTIME, LIBC, "other",
)  # fmt: skip


def classify(stack: list[tuple[str, str]]) -> str:
    """One sample's bucket; ``stack``: (symbol, dso) pairs, leaf first."""
    if stack and "kernel" in stack[0][1]:
        for sym, dso in stack:
            if "kernel" not in dso:
                break
            for pattern, bucket in _SYSCALLS:
                if pattern.search(sym):
                    return bucket
        return "kernel: other"
    for sym, dso in stack:
        base = os.path.basename(dso)
        if base.startswith("loop.") or "uvloop" in dso:
            return "uvloop"
        if "httptools" in dso:
            return "httptools (llhttp + callbacks)"
        if "__mypyc" in base:
            m = _MYPYC.match(sym)
            found = MODULE_BUCKETS.get(m.group(1)) if m is not None else None
            if found is not None:
                return found  # else a helper of mypyc's runtime: its caller decides
        if sym.startswith("_PyEval_EvalFrameDefault"):
            return "Python bytecode (interpreted)"
    leaf = os.path.basename(stack[0][1]) if stack else ""
    if leaf.startswith(("libpython", "python")):
        return RUNTIME  # no frame pointers in libpython: perf cannot say who called it
    if leaf.startswith("libc") or leaf == "[vdso]":
        return LIBC
    return "other"


def parse_perf_script(text: str) -> Counter[str]:
    """Buckets of every sample in ``perf script`` output."""
    counts: Counter[str] = Counter()
    stack: list[tuple[str, str]] = []
    frame = re.compile(r"^\s+[0-9a-f]+\s+(.+?)\s+\((.*)\)$")
    for line in [*text.splitlines(), ""]:
        if not line.strip():
            if stack:
                counts[classify(stack)] += 1
            stack = []
            continue
        m = frame.match(line)
        if m is not None:
            sym = m.group(1).split("+0x")[0]
            stack.append((sym, m.group(2)))
    return counts


def wrk_argv(args: argparse.Namespace, port: int, duration: float) -> list[str]:
    return [*wrk_base(args.connections, duration), "-s", str(WRK_DIR / "sessions.lua"),
            f"http://{HOST}:{port}{REQUEST_PATH}", "--", str(args.sessions), str(LUA_SEED)]


def profile(bench: Bench, build: str, backend_ports: list[int], backend: Any) -> dict[str, Any]:
    args = bench.args
    port, admin = free_ports(2)
    conf = router_yaml(port, admin, [(n, instance_url(p)) for n, p in zip(BACKENDS, backend_ports,
                                                                         strict=True)],
                       profile="generic", log_level="WARNING")
    router = bench.start_router(f"router-{build}", conf, port, pure=build == "pure")
    measure(bench, wrk_argv(args, port, 2), 2, router, backend, f"{build}: warmup", retries=False)
    data = bench.tmp / f"perf-{build}.data"
    perf = subprocess.Popen(
        ["perf", "record", "-e", "cpu-clock", "-F", str(args.frequency), "-g", "-p",
         str(router.pid), "-o", str(data)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    m, _ = measure(bench, wrk_argv(args, port, args.duration), args.duration, router, backend,
                   f"{build}: profiled run", retries=False)
    perf.send_signal(signal.SIGINT)
    perf.wait(30)
    script = subprocess.run(["perf", "script", "-i", str(data), "-F", "ip,sym,dso"],
                            capture_output=True, text=True, check=False, timeout=600)
    counts = parse_perf_script(script.stdout)
    bench.procs.stop(router)
    total = sum(counts.values())
    cpu_us = (m.proxy_cpu or 0.0) / m.rps * 1e6 if m.rps else 0.0
    return {"build": build, "rps": m.rps, "proxy_cpu": m.proxy_cpu, "us_per_request": cpu_us,
            "samples": total, "buckets": dict(counts)}


def run(bench: Bench) -> tuple[str, dict[str, Any]]:
    args = bench.args
    *backend_ports, status_port = free_ports(len(BACKENDS) + 1)
    backend = bench.start_nginx(
        "backend", backend_nginx_conf(bench.tmp, backend_ports, status_port), backend_ports[0],
        "/ping")
    results = [profile(bench, b, backend_ports, backend) for b in args.build_names]
    lines = header_lines("Where the router's CPU goes per request", bench.started, bench.info)
    lines += [
        f"- load: `{' '.join(wrk_argv(args, 0, args.duration)).replace(':0/', ':PORT/')}` "
        "(saturation, as proxy_bench.py) after a 2 s warmup; the router: generic profile, "
        "memory store, metrics on, in front of one nginx serving b1..b3",
        f"- sampling: `perf record -e cpu-clock -F {args.frequency} -g -p ROUTER_PID` during the "
        "measured run; each sample in one bucket by its call stack (see the script's docstring)",
        "",
    ]
    head = "| bucket | " + " | ".join(f"{r['build']}: share | {r['build']}: us/request"
                                       for r in results) + " |"
    lines += [head, "| --- |" + " ---: | ---: |" * len(results)]
    for bucket in ORDER:
        if not any(r["buckets"].get(bucket) for r in results):
            continue
        cells = []
        for r in results:
            share = r["buckets"].get(bucket, 0) / r["samples"] if r["samples"] else 0.0
            cells.append(f"{share * 100:.1f}% | {share * r['us_per_request']:.1f}")
        lines.append(f"| {bucket} | " + " | ".join(cells) + " |")
    lines.append("| **total** | " + " | ".join(
        f"100% ({r['samples']:,} samples) | **{r['us_per_request']:.1f}**" for r in results) + " |")
    lines += ["", "| build | req/s (profiled run) | router CPU | CPU per request |",
              "| --- | ---: | ---: | ---: |"]
    lines += [f"| {r['build']} | {r['rps']:,.0f} | {fmt_pct(r['proxy_cpu'])} | "
              f"{r['us_per_request']:.1f} us |" for r in results]
    lines += ["", "perf slows the process it samples a little (each build alike); the req/s here "
              "are not the throughput figures, proxy_bench.py's are."]
    return "\n".join(lines) + "\n", {"builds": results}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=8, help="seconds profiled per build (8)")
    p.add_argument("--connections", type=int, default=32, help="wrk -c (32)")
    p.add_argument("--sessions", type=int, default=1000, help="distinct X-Session-Id (1000)")
    p.add_argument("--frequency", type=int, default=1999, help="perf samples per second (1999)")
    p.add_argument("--builds", default=",".join(BUILDS), help="compiled,pure (both)")
    common_args(p)
    args = p.parse_args(argv)
    args.build_names = [b for b in BUILDS if b in args.builds.split(",")]
    if not args.build_names:
        p.error("--builds: a subset of compiled,pure")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_main("cpu", args, run, tools=("nginx", "wrk", "perf"))


if __name__ == "__main__":
    sys.exit(main())
