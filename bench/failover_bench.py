"""Failover timeline: kill -9 one simulated instance under load and measure what clients see.

    .venv/bin/python bench/failover_bench.py --sessions 50
    .venv/bin/python bench/failover_bench.py --sessions 500 --hold-timeout 60s

Starts 3 simulators (``--start-delay``: how long a restore takes, like a WAHA login) and one
router with default health and failover settings (unless overridden), creates the sessions,
drives a steady idempotent load (GET /api/sessions/{s}) over all of them, kills the
instance holding the most sessions with SIGKILL, and reports: detection time, failover
start, time until every moved session is WORKING on a survivor, requests held, the first
held request's release, and errors. Loopback only; every loop is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

if __name__ == "__main__" and not __package__:  # python bench/x.py: run as python -m bench.x
    os.execv(sys.executable, [sys.executable, "-m", f"bench.{Path(__file__).stem}", *sys.argv[1:]])

import aiohttp

from bench.lib import OUT_DIR, REPO
from bench.lib.configs import instance_url, router_yaml
from bench.lib.ports import free_port
from bench.lib.procs import Proc, Processes, module_argv, router_argv
from bench.lib.report import command_line


async def wait_ok(http: aiohttp.ClientSession, url: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            async with http.get(url, timeout=aiohttp.ClientTimeout(total=1)) as r:
                if r.status == 200:
                    return
        except (aiohttp.ClientError, TimeoutError):
            pass
        await asyncio.sleep(0.05)
    raise TimeoutError(url)


async def run(args: argparse.Namespace) -> dict[str, object]:
    tmp = Path(tempfile.mkdtemp(prefix="wa-failover-"))
    sims: dict[str, tuple[Proc, int]] = {}
    procs = Processes()
    try:
        for i in (1, 2, 3):
            port = free_port()
            argv = module_argv("router", "sim", "--port", str(port), "--name", f"node-{i}",
                               "--start-delay", str(args.start_delay), "--send-wait", "0")
            sims[f"node-{i}"] = (procs.start(f"node-{i}", argv, tmp / f"sim{i}.log", cwd=REPO), port)
        port, admin = free_port(), free_port()
        cfg = tmp / "router.yaml"
        hold = f"failover: {{hold_timeout: {args.hold_timeout}}}\n" if args.hold_timeout else ""
        instances = [(n, instance_url(p)) for n, (_, p) in sims.items()]
        cfg.write_text(router_yaml(port, admin, instances, log_level="WARNING", extra=hold))
        procs.start("router", router_argv(cfg), tmp / "router.log", cwd=REPO)
        base, adm = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin}"
        conn = aiohttp.TCPConnector(limit=64)
        async with aiohttp.ClientSession(connector=conn) as http:
            for _, p in sims.values():
                await wait_ok(http, f"http://127.0.0.1:{p}/ping")
            await wait_ok(http, base + "/readyz")
            names = [f"fo{i:04d}" for i in range(args.sessions)]
            sem = asyncio.Semaphore(32)

            async def create(n: str) -> None:
                async with sem, http.post(base + "/api/sessions", json={"name": n}) as r:
                    assert r.status == 201, await r.text()

            await asyncio.gather(*(create(n) for n in names))
            async with http.get(adm + "/admin/sessions") as r:
                home = {a["session"]: a["instance"] for a in await r.json()}
            # Wait for every session to be WORKING (the start delay).
            deadline = time.monotonic() + 60 + args.start_delay
            while time.monotonic() < deadline:
                working = 0
                for _, p in sims.values():
                    async with http.get(f"http://127.0.0.1:{p}/api/sessions?all=true") as r:
                        working += sum(1 for s in await r.json() if s["status"] == "WORKING")
                if working == len(names):
                    break
                await asyncio.sleep(0.2)
            victim = max(sims, key=lambda n: sum(1 for h in home.values() if h == n))
            moved = sorted(s for s, h in home.items() if h == victim)

            results: list[tuple[float, float, str, int]] = []  # (start, end, session, status)
            stop = asyncio.Event()

            async def client(k: int) -> None:
                i = k
                while not stop.is_set():
                    s = names[i % len(names)]
                    i += args.clients
                    t0 = time.monotonic()
                    try:
                        async with http.get(base + f"/api/sessions/{s}",
                                            timeout=aiohttp.ClientTimeout(total=120)) as r:
                            await r.read()
                            status = r.status
                    except (aiohttp.ClientError, TimeoutError):
                        status = -1
                    results.append((t0, time.monotonic(), s, status))
                    await asyncio.sleep(args.pause)

            clients = [asyncio.create_task(client(k)) for k in range(args.clients)]
            await asyncio.sleep(2)
            proc, _ = sims[victim]
            t_kill = time.monotonic()
            proc.popen.send_signal(signal.SIGKILL)
            t_detect = t_settled = None
            survivors = [p for n, (_, p) in sims.items() if n != victim]
            deadline = t_kill + args.max_wait
            while time.monotonic() < deadline:
                if t_detect is None:
                    async with http.get(adm + "/admin/instances") as r:
                        if any(i["name"] == victim and i["state"] != "healthy" for i in await r.json()):
                            t_detect = time.monotonic()
                else:
                    up: set[str] = set()  # sessions WORKING on a survivor
                    for p in survivors:
                        async with http.get(f"http://127.0.0.1:{p}/api/sessions?all=true") as r:
                            up |= {s["name"] for s in await r.json() if s["status"] == "WORKING"}
                    async with http.get(adm + "/admin/sessions") as r:
                        states = {a["session"]: a for a in await r.json()}
                    if all(s in up and states[s]["state"] != "moving"
                           and states[s]["instance"] != victim for s in moved):
                        t_settled = time.monotonic()
                        break
                await asyncio.sleep(0.05)
            await asyncio.sleep(1)
            stop.set()
            await asyncio.gather(*clients)
            async with http.get(adm + "/admin/events?limit=1000") as r:
                events = await r.json()
    finally:
        procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)
    moved_set = set(moved)
    after = [r for r in results if r[1] >= t_kill]
    errors = [r for r in after if not 200 <= r[3] < 300]
    held = [r for r in after if r[2] in moved_set and r[1] - r[0] > 1.0]
    first_release = min((r[1] for r in held), default=None)
    fo_started = next((e["ts"] for e in reversed(events) if e["kind"] == "failover_started"), None)
    out: dict[str, object] = {
        "sessions": args.sessions,
        "moved": len(moved),
        "start_delay_s": args.start_delay,
        "hold_timeout": args.hold_timeout or "15s (default)",
        "detection_s": round(t_detect - t_kill, 2) if t_detect else None,
        "all_moved_working_s": round(t_settled - t_kill, 2) if t_settled else None,
        "requests_after_kill": len(after),
        "requests_held": len(held),
        "first_held_released_s": round(first_release - t_kill, 2) if first_release else None,
        "max_hold_s": round(max((r[1] - r[0] for r in held), default=0.0), 2),
        "p50_latency_survivors_ms": round(1000 * statistics.median(
            [r[1] - r[0] for r in after if r[2] not in moved_set] or [0.0]), 2),
        "errors": len(errors),
        "error_statuses": sorted({r[3] for r in errors}),
        "failover_started_event": fo_started is not None,
    }
    return out


def render(args: argparse.Namespace, out: dict[str, object]) -> str:
    """The run as markdown: the command, the settings and one table row."""

    def sec(key: str) -> str:
        value = out.get(key)
        return "-" if value is None else f"{value} s"

    errors = out["errors"]
    lines = [
        f"## Failover timeline, {args.sessions} sessions, "
        f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}",
        "",
        f"- command: `{command_line()}`",
        f"- 3 simulators (`python -m router sim --start-delay {args.start_delay:g}`: a restore "
        f"takes {args.start_delay:g} s), one router with default health and failover settings"
        f" (hold_timeout {out['hold_timeout']}), {args.clients} clients looping GET "
        f"/api/sessions/{{s}} over every session ({args.pause:g} s pause); the instance "
        "holding the most sessions is killed with SIGKILL",
        "",
        "| sessions | moved | detection | first held request released | all moved sessions "
        "WORKING | requests after the kill | requests held (> 1 s) | longest hold | p50 "
        "latency, other sessions | errors |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| {out['sessions']} | {out['moved']} | {sec('detection_s')} "
        f"| {sec('first_held_released_s')} | {sec('all_moved_working_s')} "
        f"| {out['requests_after_kill']} | {out['requests_held']} | {sec('max_hold_s')} "
        f"| {out['p50_latency_survivors_ms']} ms | {errors} |",
        "",
        f"- errors (non-2xx or failed requests after the kill): {errors}"
        + (f" (statuses {out['error_statuses']})" if errors else "")
        + f"; target 0: {'ok' if errors == 0 else 'MISSED'}",
        f"- failover_started event seen: {out['failover_started_event']}",
    ]
    if out.get("all_moved_working_s") is None:
        lines.append(f"- **not every moved session was WORKING within {args.max_wait:g} s**")
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sessions", type=int, default=50)
    p.add_argument("--start-delay", type=float, default=1.5, help="simulated restore time (s)")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--pause", type=float, default=0.05, help="pause between a client's requests (s)")
    p.add_argument("--hold-timeout", default="", help="failover.hold_timeout (default: the router's)")
    p.add_argument("--max-wait", type=float, default=180.0)
    p.add_argument("--out-dir", type=Path, default=OUT_DIR, help="bench/out")
    args = p.parse_args()
    out = asyncio.run(run(args))
    print(json.dumps(out, indent=2))
    report = render(args, out)
    print(report)
    os.makedirs(args.out_dir, exist_ok=True)
    stem = args.out_dir / f"failover-{args.sessions}-{int(time.time())}"
    stem.with_suffix(".json").write_text(json.dumps(out))
    stem.with_suffix(".md").write_text(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
