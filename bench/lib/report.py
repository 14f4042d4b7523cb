"""Report tables: number formats, percentiles, the machine and the command a report
states, and the markdown + JSON files every benchmark writes into bench/out/."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.lib import REPO


def fmt_us(us: float) -> str:
    """Microseconds as ``850 us`` or ``1.25 ms``."""
    return f"{us:.0f} us" if us < 1000 else f"{us / 1000:.2f} ms"


def fmt_ms(v: float | None) -> str:
    """Milliseconds as ``12.5 ms`` or ``1.25 s`` (``-``: none)."""
    if v is None:
        return "-"
    return f"{v:.1f} ms" if v < 1000 else f"{v / 1000:.2f} s"


def fmt_pct(x: float | None) -> str:
    """A share (of a core) as ``42%`` (``-``: none)."""
    return "-" if x is None else f"{x * 100:.0f}%"


def pctl(values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile of ``values`` (sorted or not)."""
    if not values:
        return None
    s = sorted(values)
    return s[max(0, min(len(s) - 1, math.ceil(p / 100 * len(s)) - 1))]


def summary(values: Sequence[float]) -> dict[str, float | int | None]:
    """Count, p50/p90/p99/p99.9, max and mean of ``values``."""
    s = sorted(values)
    return {
        "n": len(s),
        "p50": pctl(s, 50),
        "p90": pctl(s, 90),
        "p99": pctl(s, 99),
        "p999": pctl(s, 99.9),
        "max": s[-1] if s else None,
        "mean": statistics.fmean(s) if s else None,
    }


def version_of(argv: list[str]) -> str:
    """The first line ``argv`` prints (a tool's ``--version``), or why there is none."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unavailable"
    lines = (done.stdout + done.stderr).strip().splitlines()
    return lines[0].strip() if lines else "unknown"


def git_state() -> tuple[str, bool]:
    """This checkout's commit, and whether router/ has uncommitted changes."""
    commit = version_of(["git", "-C", str(REPO), "rev-parse", "HEAD"])
    dirty = subprocess.run(
        ["git", "-C", str(REPO), "status", "--porcelain", "--", "router"],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    ).stdout.strip()
    return commit, bool(dirty)


def _libs() -> str:
    # Asked of a fresh interpreter: the versions the routers started from here will load.
    versions = subprocess.run(
        [
            sys.executable,
            "-c",
            "import aiohttp, redis, uvloop, httptools; "
            "print(aiohttp.__version__, redis.__version__, uvloop.__version__, httptools.__version__)",
        ],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    ).stdout.split()
    libs = dict(zip(("aiohttp", "redis-py", "uvloop", "httptools"), versions, strict=False))
    return ", ".join(f"{k} {v}" for k, v in libs.items())


def build_mode() -> str:
    """How the routers a benchmark starts run their data path (``router.build``): compiled
    with mypyc, or pure Python (no compiler, or never built: ``python setup.py build_ext``)."""
    mode = version_of([sys.executable, "-c", "from router import build; print(build.mode())"])
    return "compiled (mypyc)" if mode == "compiled" else f"pure Python ({mode})"


def ensure_compiled() -> str:
    """Build the compiled data path in place (what the benchmarks measure); its mode."""
    subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace", "--force"], cwd=REPO,
                   env={**os.environ, "WA_ROUTER_COMPILE": "1"}, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return build_mode()


def machine_info() -> dict[str, str]:
    """The machine, the tools and the code a report's figures come from (take it before
    starting anything: the commit the routers run)."""
    model = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    commit, dirty = git_state()
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
        "wa-router": f"{router_version} (git {commit[:7]}{', router/ modified' if dirty else ''}), "
                     f"data path {build_mode()}",
        "git": commit + (" (router/ modified)" if dirty else ""),
        "libs": _libs(),
    }


def command_line() -> str:
    """This run's command, as a report states it (the script relative to the repo root,
    where it is run from)."""
    script = Path(sys.argv[0]).resolve() if sys.argv and sys.argv[0] else None
    argv = list(sys.argv)
    if script is not None and script.is_relative_to(REPO):
        argv[0] = str(script.relative_to(REPO))
    return shlex.join([sys.executable, *argv])


def header_lines(
    title: str,
    started: dt.datetime,
    info: dict[str, str],
    tools: Sequence[str] = ("nginx", "wrk", "wa-router"),
) -> list[str]:
    """A report's heading, command and machine (``tools``: which versions to name)."""
    names = {"nginx": f"nginx {info['nginx']}", "wa-router": f"wa-router {info['wa-router']}"}
    return [
        f"## {title}, {started.strftime('%Y-%m-%d %H:%M:%S UTC')}",
        "",
        f"- command: `{command_line()}`",
        "- machine: "
        + ", ".join(
            [
                f"{info['nproc']} CPUs ({info['cpu']})",
                info["kernel"],
                info["python"],
                *(names.get(t, info[t]) for t in tools),
            ]
        ),
    ]


def json_args(args: Any) -> dict[str, Any]:
    """An argparse namespace as JSON values (paths as strings)."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}


def write_report(
    out_dir: Path,
    stem: str,
    markdown: str,
    raw: dict[str, Any],
    started: dt.datetime,
    args: Any,
    info: dict[str, str],
) -> Path:
    """``<out_dir>/<stem>.md`` and ``.json`` (the date, command, arguments and machine
    first, then ``raw``); the markdown file's path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    md = out_dir / f"{stem}.md"
    md.write_text(markdown)
    data = {
        "date": started.isoformat(),
        "command": [sys.executable, *sys.argv],
        "args": json_args(args),
        "machine": info,
        **raw,
    }
    md.with_suffix(".json").write_text(json.dumps(data, indent=2) + "\n")
    print(f"written: {md} and {md.with_suffix('.json')}", file=sys.stderr)
    return md
