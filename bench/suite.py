"""The benchmark suite: every benchmark in turn, then bench/RESULTS.md rewritten from their reports.

    /work/venv/bin/python bench/suite.py [--quick] [--results bench/RESULTS.md]
        [--only proxy,latency,...] [--skip ...] [--out-dir bench/out] [--list]

Runs, one after another (each script starts and stops its own servers on 127.0.0.1; see
bench/README.md for what each measures):

  proxy      proxy_bench.py: throughput and p50/p99 at saturation: backend direct, nginx,
             HAProxy, router (memory), router (Redis), router (workers: 2)
  metrics    proxy_bench.py: what metrics cost (router / router-nometrics), what idempotency
             keys cost requests without the header (router / router-nokeys) and what the
             access log costs (router-accesslog / router), ABBA rounds
  cpu        cpu_profile.py: perf on the live router at saturation, CPU per request by
             bucket (kernel write/read, llhttp, uvloop, each data-path module, the
             interpreter), compiled and pure Python
  latency    latency_bench.py: p50/p99 at a fixed 2,000 req/s, router vs nginx
  growth     growth_bench.py: req/s, p99 and RSS over 1k/10k/100k sessions x 3/50/200
             instances
  stream     stream_bench.py: 64 KiB request bodies, 1 MiB responses (MB/s)
  store      store_bench.py: the Redis store with 100,000 sessions over 200 instances
  failover   failover_bench.py --sessions 50 (and, in a full run, 500 with hold_timeout 60s)
  webhook    webhook_bench.py: webhook accept rate and delivery latency
  outbox     outbox_bench.py: enqueue, campaign batches, dispatch, 1,000,000 queued
  idempotency  idempotency_bench.py: sendText with a unique Idempotency-Key per request
             against the same load without it (Redis store)
  extract    extract_bench.py: SessionExtractor.extract, ns per call

Each writes its markdown report and raw JSON into its own directory,
``bench/out/suite-<timestamp>/<step>/``, with its output in ``log.txt`` there. Then the suite
writes ``--results`` (default bench/RESULTS.md; a copy always goes to the run directory): a
header (date, machine, git commit, this command), a table of the issues' targets with
met / MISSED, read from the JSON reports, and every report under its exact command. A
benchmark that fails (exit code != 0, or no report) is shown as failed with the tail of its
log; the suite goes on with the next one. ``--quick``: short runs and fewer rounds, a smoke
test of the whole suite (~5-6 min instead of ~30-40); its figures are not for comparison.
Exit code: 0 when every benchmark ran and exited 0, 1 otherwise (missed targets alone are
not failures: they are in the table).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

if __name__ == "__main__" and not __package__:  # python bench/x.py: run as python -m bench.x
    os.execv(sys.executable, [sys.executable, "-m", f"bench.{Path(__file__).stem}", *sys.argv[1:]])

from bench.lib import BENCH_DIR, OUT_DIR, REPO
from bench.lib.noisy import NOISY
from bench.lib.procs import tail
from bench.lib.report import ensure_compiled, machine_info
from bench.suite_targets import SUMMARIES, Outcome, Step, max_others

PY = sys.executable
WAIT_QUICK = ["--wait-quiet", "2", "--noisy-retries", "0"]


STEPS = [
    Step(
        "proxy",
        "Proxy throughput at saturation (issues 2, 3, 8)",
        "proxy_bench.py",
        ["--targets", "direct,nginx,haproxy,router,router-pure,router-redis,router-workers2",
         "--duration", "8", "--repeats", "5"],
        ["--targets", "direct,nginx,haproxy,router,router-pure,router-redis,router-workers2",
         "--duration", "3", "--warmup", "1", "--repeats", "1", *WAIT_QUICK],
        3600,
    ),
    Step(
        "metrics",
        "Metrics cost (issue 6); idempotency keys enabled, header absent; access log (issue 17)",
        "proxy_bench.py",
        ["--targets", "nginx,router-nokeys,router,router-nometrics,router-accesslog",
         "--repeats", "20", "--duration", "5", "--warmup", "1"],
        ["--targets", "nginx,router-nokeys,router,router-nometrics,router-accesslog",
         "--repeats", "2",
         "--duration", "2", "--warmup", "1", *WAIT_QUICK],
        3600,
    ),
    Step(
        "cpu",
        "Where the router's CPU goes per request, compiled and pure Python (issue 20)",
        "cpu_profile.py",
        ["--duration", "8"],
        ["--duration", "2", *WAIT_QUICK],
        900,
    ),
    Step(
        "latency",
        "Latency at a fixed rate (issue 8)",
        "latency_bench.py",
        ["--rate", "2000", "--duration", "6", "--repeats", "8"],
        ["--rate", "2000", "--duration", "4", "--warmup", "2", "--repeats", "1", *WAIT_QUICK],
        1800,
    ),
    Step(
        "growth",
        "Cost growth: sessions x instances (issue 8)",
        "growth_bench.py",
        ["--sessions", "1000,10000,100000", "--instances", "3,50,200", "--duration", "4",
         "--repeats", "4"],
        ["--sessions", "1000,10000,100000", "--instances", "3,50,200", "--duration", "2",
         "--warmup", "1", "--repeats", "1", *WAIT_QUICK],
        3600,
    ),
    Step(
        "stream",
        "Streaming: 64 KiB bodies, 1 MiB responses (issue 8)",
        "stream_bench.py",
        ["--duration", "5", "--repeats", "2"],
        ["--duration", "2", "--warmup", "1", "--repeats", "1", *WAIT_QUICK],
        1800,
    ),
    Step(
        "store",
        "Redis store at scale (issue 3)",
        "store_bench.py",
        [],
        ["--lookups", "200000", "--repeats", "2", "--router-repeats", "1"],
        900,
    ),
    Step(
        "failover",
        "Failover timeline, 50 sessions (issue 4)",
        "failover_bench.py",
        ["--sessions", "50"],
        ["--sessions", "50"],
        900,
    ),
    Step(
        "failover-500",
        "Failover timeline, 500 sessions, hold_timeout 60 s (issue 4)",
        "failover_bench.py",
        ["--sessions", "500", "--hold-timeout", "60s"],
        None,
        1200,
    ),
    Step(
        "webhook",
        "Webhook relay (issue 5)",
        "webhook_bench.py",
        [],
        ["--duration", "3", "--warmup", "1", "--repeats", "1", "--paced-duration", "3",
         *WAIT_QUICK],
        2400,
    ),
    Step(
        "outbox",
        "Outbox: enqueue (vs aiohttp + XADD), campaign batches, dispatch (vs posting directly), "
        "1,000,000 queued (memory, rates)",
        "outbox_bench.py",
        ["--duration", "5", "--dispatch", "10000", "--batches", "5", "--million", "1000000"],
        ["--duration", "3", "--dispatch", "2000", "--batches", "1"],
        1200,
    ),
    Step(
        "idempotency",
        "Idempotency-Key on every POST, Redis store: sendText with and without keys (issue 17)",
        "idempotency_bench.py",
        ["--duration", "8", "--warmup", "2", "--repeats", "6"],
        ["--duration", "3", "--warmup", "1", "--repeats", "1", *WAIT_QUICK],
        1800,
    ),
    Step(
        "extract",
        "Session id extraction (micro-benchmark)",
        "extract_bench.py",
        [],
        ["--number", "50000", "--repeat", "3"],
        600,
    ),
]


def run_step(step: Step, argv: list[str], out_dir: Path) -> Outcome:
    out_dir.mkdir(parents=True, exist_ok=True)
    o = Outcome(step, argv, out_dir, out_dir / "log.txt")
    print(f"\n=== {step.key}: {shlex.join(argv)}", file=sys.stderr, flush=True)
    t0 = time.monotonic()
    with o.log.open("wb") as log:
        # Its own process group: on a timeout or Ctrl-C, the step and whatever it started
        # (servers it did not get to stop) are stopped together, by group id.
        proc = subprocess.Popen(
            argv, cwd=REPO, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        try:
            o.code = proc.wait(timeout=step.timeout)
        except subprocess.TimeoutExpired:
            o.timed_out = True
            o.code = _stop_group(proc)
        except BaseException:
            _stop_group(proc)
            raise
    o.seconds = time.monotonic() - t0
    o.reports = sorted(out_dir.glob("*.md"))
    for path in sorted(out_dir.glob("*.json")):
        with contextlib.suppress(ValueError, OSError):
            o.data.append(json.loads(path.read_text()))
    state = "ok" if o.ok else ("TIMED OUT" if o.timed_out else f"FAILED (exit {o.code})")
    print(f"=== {step.key}: {state} in {o.seconds:.0f} s", file=sys.stderr, flush=True)
    return o


def _stop_group(proc: subprocess.Popen[bytes]) -> int:
    """SIGINT (the scripts clean up on it), then SIGTERM, then SIGKILL, to the step's
    process group; returns the exit code."""
    for sig, wait in ((signal.SIGINT, 30), (signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            return proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
    return -9


# --------------------------------------------------------------------------- RESULTS.md


def demote(md: str) -> str:
    """Headings one level down (a report's ``##`` goes under the suite's ``##``)."""
    out = []
    for line in md.splitlines():
        if line.startswith("#"):
            line = "#" + line
        out.append(line)
    return "\n".join(out)


def display_cmd(argv: list[str]) -> str:
    """The command as one would type it in the repo root (the venv's python, relative
    script path), without the suite's --out-dir."""
    shown: list[str] = []
    skip = False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == "--out-dir":
            skip = True
            continue
        shown.append(os.path.relpath(a, REPO) if a.startswith(str(BENCH_DIR)) else a)
    return shlex.join(shown)


def render(
    args: argparse.Namespace,
    outcomes: list[Outcome],
    info: dict[str, str],
    started: dt.datetime,
    seconds: float,
    run_dir: Path,
    interrupted: bool,
) -> str:
    cmd = shlex.join([PY, os.path.relpath(__file__, REPO), *sys.argv[1:]])
    lines = [
        "# Benchmark results",
        "",
        "Written by the benchmark suite (`bench/suite.py`): rerun it rather than editing this "
        "file. Every figure comes from the run below, on this project's machine kind (2 "
        "cores, loopback only); the machines are noisy, so only ratios within one run mean "
        "anything: every ratio here is against nginx (or the stated baseline) in the same "
        "run.",
        "",
    ]
    if args.quick:
        lines += [
            "**QUICK RUN (`--quick`): a smoke test with short runs and single rounds. Its "
            "figures are not for comparison; run the suite without `--quick`.**",
            "",
        ]
    if interrupted:
        lines += ["**INTERRUPTED: the suite did not run to the end.**", ""]
    lines += [
        f"- date: {started.strftime('%Y-%m-%d %H:%M UTC')}; the suite took {seconds / 60:.1f} min",
        f"- command: `{cmd}` (in the repo root)",
        f"- machine: {info['nproc']} CPUs ({info['cpu']}), {info['kernel']}, {info['python']}",
        f"- tools: nginx {info['nginx']}, {info['haproxy']}, {info['wrk']}, {info['redis']}",
        f"- code: wa-router {info['wa-router']}",
        f"- raw reports and logs: `{_rel(run_dir)}/` (git-ignored)",
        "",
        "## Targets",
        "",
        "| # | figure | value | target | verdict | section | others CPU |",
        "| ---: | --- | --- | --- | --- | --- | ---: |",
    ]
    n = 0
    index = {o.step.key: i for i, o in enumerate(outcomes, 1)}
    noisy: list[str] = []
    for o in outcomes:
        others = max_others(o.data)
        if others is not None and others > NOISY:
            noisy.append(o.step.key)
        shown = "-" if others is None else f"{others:.0%}" + (" (noisy)" if others > NOISY else "")
        for row in SUMMARIES[o.step.key](o):
            n += 1
            verdict = {"met": "met", "MISSED": "**MISSED**"}.get(row.verdict, row.verdict)
            lines.append(
                f"| {n} | {row.what} | {row.value} | {row.target} | {verdict} "
                f"| {index[row.step]}. {row.step} | {shown} |"
            )
    failed = [o for o in outcomes if not o.ok]
    lines += [
        "",
        "Verdicts come from each benchmark's JSON report; n/a: the benchmark did not produce "
        "that figure (see its section). Each section below starts with the command that "
        "produced it. others CPU: the most CPU that processes not started by the benchmark "
        "took during any of its kept measured runs (the scripts wait for a quiet machine and "
        "run a measurement again when others took over 10% of a core); above 10%, the "
        "figures of that benchmark are noisy.",
    ]
    if noisy:
        lines.append(
            f"\n**Noisy**: {', '.join(noisy)}: other processes were busy during measured runs; "
            "rerun on a quiet machine before trusting those verdicts."
        )
    if failed:
        lines.append(
            "\n**Failed benchmarks**: "
            + ", ".join(f"{o.step.key} ({_state(o)})" for o in failed)
        )
    for i, o in enumerate(outcomes, 1):
        lines += [
            "",
            f"## {i}. {o.step.title}",
            "",
            f"Reproduce: `{display_cmd(o.argv)}` ({_state(o)}, {o.seconds:.0f} s)",
        ]
        if not o.ok:
            lines += [
                "",
                f"**{_state(o)}**: last lines of its output "
                f"(`{_rel(o.log)}`):",
                "",
                "```",
                *tail(o.log, 40, "log").splitlines()[1:-1],
                "```",
            ]
        for report in o.reports:
            lines += ["", demote(report.read_text().rstrip())]
    return "\n".join(lines) + "\n"


def _rel(path: Path) -> str:
    """``path`` relative to the repo root when inside it."""
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def _state(o: Outcome) -> str:
    if o.code is None:
        return "not run"
    if o.timed_out:
        return f"timed out after {o.step.timeout:.0f} s"
    if o.code != 0:
        return f"failed, exit code {o.code}"
    if not o.reports:
        return "failed: no report written"
    return "ok"


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="short runs: a smoke test (~5-6 min)")
    p.add_argument(
        "--results",
        type=Path,
        default=BENCH_DIR / "RESULTS.md",
        help="where to write the results (bench/RESULTS.md)",
    )
    p.add_argument("--only", default="", help="comma-separated steps to run (default: all)")
    p.add_argument("--skip", default="", help="comma-separated steps to leave out")
    p.add_argument("--out-dir", type=Path, default=OUT_DIR, help="bench/out")
    p.add_argument("--list", action="store_true", help="print the steps and their commands")
    args = p.parse_args(argv)
    keys = [s.key for s in STEPS]
    only = {k.strip() for k in args.only.split(",") if k.strip()}
    skip = {k.strip() for k in args.skip.split(",") if k.strip()}
    unknown = sorted((only | skip) - set(keys))
    if unknown:
        p.error(f"unknown steps {', '.join(unknown)}; steps: {', '.join(keys)}")
    args.steps = [
        s
        for s in STEPS
        if (not only or s.key in only) and s.key not in skip
        and (s.quick is not None or not args.quick)
    ]  # fmt: skip
    return args


def step_argv(step: Step, quick: bool, out_dir: Path) -> list[str]:
    extra = step.quick if quick and step.quick is not None else step.full
    argv = [PY, str(BENCH_DIR / step.script), *extra]
    if step.out_dir_arg:
        argv += ["--out-dir", str(out_dir)]
    return argv


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = dt.datetime.now(dt.UTC)
    run_dir = args.out_dir / f"suite-{started.strftime('%Y%m%d-%H%M%S')}"
    if args.list:
        for s in args.steps:
            print(f"{s.key:13s} {display_cmd(step_argv(s, args.quick, run_dir / s.key))}")
        return 0
    # What the benchmarks measure is the compiled data path (router.build); a pure-Python
    # router runs beside it in the proxy step (router-pure).
    print(f"data path: {ensure_compiled()}", file=sys.stderr)
    info = machine_info()  # before the runs: the commit they measure
    outcomes: list[Outcome] = []
    interrupted = False
    t0 = time.monotonic()
    try:
        for step in args.steps:
            out_dir = run_dir / step.key
            outcomes.append(run_step(step, step_argv(step, args.quick, out_dir), out_dir))
    except KeyboardInterrupt:
        interrupted = True
        print("\ninterrupted: writing what ran so far", file=sys.stderr)
    text = render(args, outcomes, info, started, time.monotonic() - t0, run_dir, interrupted)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "RESULTS.md").write_text(text)
    if interrupted:
        print(f"not touching {args.results}; partial results in {run_dir / 'RESULTS.md'}",
              file=sys.stderr)  # fmt: skip
        return 1
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(text)
    failed = [o.step.key for o in outcomes if not o.ok]
    print(
        f"\nwritten: {args.results} (and {run_dir / 'RESULTS.md'}); "
        + (f"FAILED: {', '.join(failed)}" if failed else "every benchmark ran"),
        file=sys.stderr,
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
