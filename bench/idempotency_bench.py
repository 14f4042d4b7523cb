"""Idempotency-Key throughput (issue 17): proxied ``POST /api/sendText`` through the router
with the Redis store, without the header and with a unique key on every request, side by
side in one run.

    python bench/idempotency_bench.py [--duration 8] [--warmup 2] [--connections 32]
        [--sessions 1000] [--repeats 5] [--no-nokeys]

One run, on 127.0.0.1 only:

1. starts the backends of ``proxy_bench.py`` (one nginx, 1 worker, b1..b3 answering every
   path, POSTs included, with a tiny JSON), one redis-server (appendonly, as in
   production) and the router (``profile: waha``: the session is the body's ``session``;
   Redis store, prefix ``bench:``, ``listen.idempotency_keys: true``, the default); and,
   unless ``--no-nokeys``, a second router with ``listen.idempotency_keys: false`` (same
   Redis, prefix ``bench-nokeys:``);
2. checks that a POST answers 200 from a backend; that the same POST with an
   ``Idempotency-Key`` sent twice is forwarded once and replayed once
   (``Idempotent-Replayed: true``) by the first router, and forwarded twice by the second
   (the switch took effect);
3. runs ``wrk -s bench/wrk/keyed.lua`` (sessions ``s-1..s-N`` in turn, a ~110-byte body) in
   interleaved rounds: ``plain`` (no header), ``keyed`` (``Idempotency-Key:
   <run>-<thread>-<n>``: unique per request, and per run: every wrk run, warmups and runs
   done again included, gets a tag of its own) and ``nokeys`` (the second router, no
   header); the order is reversed every other round. Each measured run follows a warmup
   with the same command; the machine must be quiet (run again when others took over 10%
   of a core);
4. checks around every run: a keyed run must add at least one key (``<prefix>idem:*``,
   counted in Redis by a script that SCANs them) per response wrk received and at most one
   per request it may have left in flight (``--connections``), and the backends must have
   served at least as many requests as wrk received responses: every keyed request claimed
   a key of its own and was forwarded, none was answered from a kept response (replays:
   0). A run without the header must add no key. At the end, the states of every key
   (done, outcome unknown, in flight);
5. reports per round req/s, p50/p99, router CPU per response and redis-server CPU, and the
   median of the per-round ratios keyed / plain (target >= 0.7, with a 95% bootstrap
   interval from 6 rounds on) and plain / nokeys (what the feature costs a POST without
   the header; for information, issue 17's 2% is judged by ``proxy_bench.py``'s
   ``router`` / ``router-nokeys``); writes ``bench/out/idempotency-<stamp>.{md,json}``.

Exits 1 on any non-2xx response or socket error, a failed check, or a process that died.
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:  # python bench/x.py: run as python -m bench.x
    import os
    import sys
    from pathlib import Path

    os.execv(sys.executable, [sys.executable, "-m", f"bench.{Path(__file__).stem}", *sys.argv[1:]])

import argparse
import http.client
import itertools
import shlex
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from bench.lib import HOST, WRK_DIR
from bench.lib.admin import backend_counters
from bench.lib.configs import (
    BACKENDS,
    backend_nginx_conf,
    instance_url,
    redis_args,
    redis_url,
    router_yaml,
)
from bench.lib.cpu import CpuSnapshot
from bench.lib.harness import Bench, common_args, run_main
from bench.lib.noisy import NOISY, measure_quietly, noisy_note
from bench.lib.ports import free_ports
from bench.lib.procs import BenchError, Proc, wait_http, wait_redis
from bench.lib.redis_probe import REDIS_PREFIX, RedisProbe, fmt_commands
from bench.lib.report import command_line, fmt_pct, fmt_us
from bench.lib.wrk import WrkResult, run_wrk, wrk_base
from bench.proxy_results import MIN_ROUNDS_CI, bootstrap_median_ci

SCRIPT = WRK_DIR / "keyed.lua"
PATH = "/api/sendText"
NOKEYS_PREFIX = "bench-nokeys:"
KEYED_TARGET = 0.7  # issue 17: keyed / plain >= 0.7
MODES = ("plain", "keyed", "nokeys")  # the runs of a round, in the order of odd rounds
BODY = b'{"session":"s-1","chatId":"4915112345678@c.us","text":"check"}'

# Counts the keys matching ARGV[1] (SCAN inside Redis: one call, no key sent back);
# with ARGV[2] = "states", by their first byte (the Record's state: D, U, F).
COUNT_KEYS = """
local cursor, n, states = '0', 0, {}
repeat
  local r = redis.call('SCAN', cursor, 'MATCH', ARGV[1], 'COUNT', 10000)
  cursor = r[1]
  n = n + #r[2]
  if ARGV[2] == 'states' then
    for _, k in ipairs(r[2]) do
      local s = redis.call('GETRANGE', k, 0, 0)
      states[s] = (states[s] or 0) + 1
    end
  end
until cursor == '0'
local out = {n}
for s, c in pairs(states) do
  out[#out + 1] = s
  out[#out + 1] = c
end
return out
"""
STATE_NAMES = {"D": "done", "U": "outcome unknown", "F": "in flight"}


@dataclass
class Run:
    """One measured (or warmup) wrk run of one mode, and what happened around it."""

    mode: str
    round: int
    tag: str  # the keys' run tag (keyed)
    wrk: WrkResult
    command: str
    router_cpu: float  # cores
    redis_cpu: float
    backend_cpu: float
    wrk_cpu: float
    others_cpu: float
    others_before: float
    keys_added: int  # <prefix>idem:* keys before / after, difference
    backend_requests: int  # served by the backends during the run
    replays_bound: int  # at most this many responses were not forwarded (0: none)
    redis_commands: dict[str, int]  # what the routers sent Redis during the run (INFO)

    @property
    def rps(self) -> float:
        return self.wrk.rps

    @property
    def cpu_us(self) -> float:
        """Router CPU per response, microseconds."""
        return self.router_cpu / self.rps * 1e6 if self.rps else 0.0


@dataclass
class Mode:
    name: str
    label: str
    router: Proc
    port: int
    runs: list[Run] = field(default_factory=list)
    warmups: list[Run] = field(default_factory=list)
    discarded: list[Run] = field(default_factory=list)

    def median(self, key: str) -> float:
        if key == "rps":
            return statistics.median(r.rps for r in self.runs)
        if key == "cpu_us":
            return statistics.median(r.cpu_us for r in self.runs)
        return statistics.median(r.wrk.latency_us[key] for r in self.runs)


def round_order(rnd: int, modes: list[str]) -> list[str]:
    """The modes in round ``rnd``'s order: as given in odd rounds, reversed in even ones, so
    that no mode always runs first or right after another."""
    return list(modes) if rnd % 2 else list(reversed(modes))


def key_bounds(responses: int, keys_added: int, connections: int) -> list[str]:
    """Problems with a keyed run's keys: each response wrk received is one request that
    claimed a key of its own (so at least ``responses`` keys), and at most ``connections``
    more requests were in flight when wrk stopped."""
    problems = []
    if keys_added < responses:
        problems.append(
            f"{keys_added:,} keys added for {responses:,} responses: "
            f"{responses - keys_added:,} requests did not claim a new key (replayed?)"
        )
    if keys_added > responses + connections:
        problems.append(
            f"{keys_added:,} keys added for {responses:,} responses and at most "
            f"{connections} requests in flight"
        )
    return problems


def ratio_summary(a: list[float], b: list[float]) -> dict[str, Any]:
    """Per-round ratios a / b, their median and (from MIN_ROUNDS_CI rounds) a 95% bootstrap
    interval of that median."""
    ratios = [x / y for x, y in zip(a, b, strict=True) if y]
    if not ratios:
        return {"per_round": [], "median": None, "ci95": None}
    ci = bootstrap_median_ci(ratios) if len(ratios) >= MIN_ROUNDS_CI else None
    return {"per_round": ratios, "median": statistics.median(ratios), "ci95": ci}


# --------------------------------------------------------------------------- checks


def post(port: int, headers: dict[str, str], body: bytes = BODY) -> tuple[int, dict[str, str], bytes]:
    """One POST /api/sendText; status, headers (lower-case names), body."""
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        conn.request("POST", PATH, body, {"Content-Type": "application/json", **headers})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def switch_check(port: int, keys_on: bool, name: str) -> list[str]:
    """A POST answers 200 from a backend; the same keyed POST twice is answered by a backend
    and then replayed (keys on: ``Idempotent-Replayed: true``), or answered by a backend
    twice (keys off)."""
    problems: list[str] = []
    status, headers, body = post(port, {})
    if status != 200 or b'"node"' not in body or "x-router-instance" not in headers:
        problems.append(f"{name}: POST {PATH}: HTTP {status} {body[:200]!r}")
    key = {"Idempotency-Key": f"check-{name}-{time.time_ns()}"}
    answers = [post(port, key) for _ in range(2)]
    statuses = [a[0] for a in answers]
    replayed = [a[1].get("idempotent-replayed") == "true" for a in answers]
    want = [False, keys_on]
    if statuses != [200, 200] or replayed != want:
        problems.append(
            f"{name}: the same keyed POST twice: HTTP {statuses}, replayed {replayed}; "
            f"expected 200 twice, replayed {want}"
        )
    return problems


def count_keys(probe: RedisProbe, prefix: str, states: bool = False) -> tuple[int, dict[str, int]]:
    """The keys ``<prefix>idem:*`` (and with ``states``, how many of each state)."""
    reply = probe.command("EVAL", COUNT_KEYS, "0", f"{prefix}idem:*", "states" if states else "")
    if not isinstance(reply, list) or not reply or not isinstance(reply[0], int):
        raise BenchError(f"redis: counting keys answered {reply!r}")
    pairs = reply[1:]
    by_state = {
        STATE_NAMES.get(str(s), str(s)): int(str(c)) for s, c in zip(pairs[::2], pairs[1::2], strict=True)
    }
    return reply[0], by_state


# --------------------------------------------------------------------------- runs


def start(bench: Bench) -> tuple[dict[str, Mode], Proc, int, Proc, RedisProbe]:
    """Backends, redis-server, the router(s); the modes, the backend nginx, its status
    port, the redis-server and a probe on it."""
    args, tmp, procs = bench.args, bench.tmp, bench.procs
    *backend_ports, status_port = free_ports(len(BACKENDS) + 1)
    port, admin, nokeys_port, nokeys_admin, rport = free_ports(5)
    instances = [(n, instance_url(p)) for n, p in zip(BACKENDS, backend_ports, strict=True)]
    backend = bench.start_nginx(
        "backend", backend_nginx_conf(tmp, backend_ports, status_port), backend_ports[0], "/ping"
    )
    for p in backend_ports[1:]:
        wait_http(procs, p, "/ping", "backend nginx")
    bench.logs.append(tmp / "redis.log")
    redis = procs.start("redis-server", redis_args(tmp / "redis", rport), tmp / "redis.log")
    wait_redis(procs, rport)
    probe = RedisProbe(rport)

    def router(name: str, p: int, a: int, prefix: str, keys: bool) -> Proc:
        conf = router_yaml(p, a, instances, log_level="WARNING", store_url=redis_url(rport),
                           store_prefix=prefix, idempotency_keys=keys)  # fmt: skip
        proc = bench.start_router(name, conf, p)
        bench.copy_logs.append(proc.log)
        return proc

    modes: dict[str, Mode] = {}
    proc = router("router", port, admin, REDIS_PREFIX, True)
    modes["plain"] = Mode("plain", "router, no Idempotency-Key", proc, port)
    modes["keyed"] = Mode("keyed", "router, a unique Idempotency-Key per request", proc, port)
    bench.failures += switch_check(port, True, "router")
    if args.nokeys:
        proc = router("router-nokeys", nokeys_port, nokeys_admin, NOKEYS_PREFIX, False)
        modes["nokeys"] = Mode(
            "nokeys", "router-nokeys (`listen.idempotency_keys: false`), no Idempotency-Key",
            proc, nokeys_port,
        )  # fmt: skip
        bench.failures += switch_check(nokeys_port, False, "router-nokeys")
    return modes, backend, status_port, redis, probe


def wrk_argv(args: argparse.Namespace, port: int, mode: str, tag: str, duration: float) -> list[str]:
    """The load: ``keyed.lua`` POSTing sendText bodies, with a key (``keyed``) or not."""
    lua_mode = "keyed" if mode == "keyed" else "plain"
    return [
        *wrk_base(args.connections, duration, args.threads), "-s", str(SCRIPT),
        f"http://{HOST}:{port}{PATH}", "--", str(args.sessions), lua_mode, tag,
    ]  # fmt: skip


def run_once(
    bench: Bench, m: Mode, backend: Proc, status_port: int, redis: Proc, probe: RedisProbe,
    rnd: int, duration: float, tags: itertools.count[int], quiet: float,
) -> Run:  # fmt: skip
    """One wrk run of mode ``m`` (a new key tag each time) and the checks around it."""
    args = bench.args
    prefix = REDIS_PREFIX if m.name != "nokeys" else NOKEYS_PREFIX
    tag = f"r{rnd}t{next(tags)}-{time.time_ns() % 10**9}"
    argv = wrk_argv(args, m.port, m.name, tag, duration)
    keys0, _ = count_keys(probe, prefix)
    _, served0 = backend_counters(status_port)
    stats0 = probe.snapshot()
    before = CpuSnapshot.take(m.router.pid, backend.pid, redis.pid)
    res, out = run_wrk(argv, duration)
    used = CpuSnapshot.take(m.router.pid, backend.pid, redis.pid).usage_since(before)
    commands = probe.snapshot().since(stats0)
    bench.procs.check_alive()
    if res.errors:
        bench.failures.append(f"{m.name}: round {rnd}: {res.errors_text()}\n{out}")
    _, served1 = backend_counters(status_port)
    keys1, _ = count_keys(probe, prefix)
    added, served = keys1 - keys0, served1 - served0
    # At most this many responses came from somewhere else than a backend (a replay).
    replays_bound = max(0, res.requests - served) if m.name != "keyed" else max(
        0, res.requests - served, res.requests - added)
    problems = key_bounds(res.requests, added, args.connections) if m.name == "keyed" else (
        [f"{added:,} keys added by requests without the header"] if added else [])
    if served < res.requests:
        problems.append(f"the backends served {served:,} requests for {res.requests:,} responses")
    bench.failures += [f"{m.name}: round {rnd}: {p}" for p in problems]
    return Run(
        mode=m.name, round=rnd, tag=tag, wrk=res, command=shlex.join(argv),
        router_cpu=used["target"], redis_cpu=used["redis"], backend_cpu=used["backend"],
        wrk_cpu=used["wrk"], others_cpu=used["others"], others_before=quiet,
        keys_added=added, backend_requests=served, replays_bound=replays_bound,
        redis_commands=commands,
    )  # fmt: skip


def run(bench: Bench) -> tuple[str, dict[str, Any]]:
    args = bench.args
    probe: RedisProbe | None = None
    try:
        modes, backend, status_port, redis, probe = start(bench)
        tags = itertools.count(1)
        for rnd in range(1, args.repeats + 1):
            for name in round_order(rnd, [n for n in MODES if n in modes]):
                m = modes[name]
                if args.warmup > 0:
                    m.warmups.append(run_once(bench, m, backend, status_port, redis, probe, rnd,
                                              args.warmup, tags, 0.0))  # fmt: skip

                def once(quiet: float, attempt: int, m: Mode = m, rnd: int = rnd) -> Run:
                    return run_once(bench, m, backend, status_port, redis, probe, rnd,
                                    args.duration, tags, quiet)  # fmt: skip

                kept, discarded = measure_quietly(
                    bench.procs, args, once, lambda r: r.others_cpu, f"{name}: round {rnd}"
                )
                m.runs.append(kept)
                m.discarded += discarded
                print(
                    f"  round {rnd}/{args.repeats} {name:7s} {kept.rps:>9,.0f} req/s  p50 "
                    f"{fmt_us(kept.wrk.latency_us['50'])}  p99 {fmt_us(kept.wrk.latency_us['99'])}"
                    f"  router {fmt_pct(kept.router_cpu)} ({kept.cpu_us:.1f} us/response), "
                    f"redis {fmt_pct(kept.redis_cpu)}, others {fmt_pct(kept.others_cpu)}; "
                    f"keys added {kept.keys_added:,}, backends served {kept.backend_requests:,}; "
                    f"Redis: {fmt_commands(kept.redis_commands)}",
                    file=sys.stderr, flush=True,
                )  # fmt: skip
        time.sleep(1.0)  # outcomes of the last requests written
        total, states = count_keys(probe, REDIS_PREFIX, states=True)
    finally:
        if probe is not None:
            probe.close()
    raw = summarize(args, modes)
    raw["keys"] = {"total": total, "states": states}
    return render(args, modes, raw, bench), raw


def summarize(args: argparse.Namespace, modes: dict[str, Mode]) -> dict[str, Any]:
    plain, keyed = modes["plain"], modes["keyed"]
    nokeys = modes.get("nokeys")
    keyed_ratio = ratio_summary([r.rps for r in keyed.runs], [r.rps for r in plain.runs])
    cpu_ratio = ratio_summary([r.cpu_us for r in plain.runs], [r.cpu_us for r in keyed.runs])
    out: dict[str, Any] = {
        "wrk": wrk_argv(args, 0, "keyed", "TAG", args.duration),
        "keyed_ratio": keyed_ratio,
        "keyed_target": KEYED_TARGET,
        "keyed_ok": keyed_ratio["median"] is not None and keyed_ratio["median"] >= KEYED_TARGET,
        "cpu_ratio_plain_over_keyed": cpu_ratio,
        "replays": sum(r.replays_bound for r in keyed.runs + keyed.warmups + keyed.discarded),
        "keyed_requests": sum(r.wrk.requests for r in keyed.runs),
        "keyed_keys_added": sum(r.keys_added for r in keyed.runs),
        "modes": {
            m.name: {
                "label": m.label,
                "median_rps": m.median("rps") if m.runs else None,
                "median_cpu_us": m.median("cpu_us") if m.runs else None,
                "runs": [asdict(r) for r in m.runs],
                "warmups": [asdict(r) for r in m.warmups],
                "discarded_noisy_runs": [asdict(r) for r in m.discarded],
            }
            for m in modes.values()
        },
    }
    if nokeys is not None:
        out["nokeys_ratio"] = ratio_summary(
            [r.rps for r in plain.runs], [r.rps for r in nokeys.runs]
        )
    return out


def render(args: argparse.Namespace, modes: dict[str, Mode], raw: dict[str, Any], bench: Bench) -> str:
    plain, keyed = modes["plain"], modes["keyed"]
    nokeys = modes.get("nokeys")
    info = bench.info
    lines = [
        f"## Idempotency keys, {bench.started.strftime('%Y-%m-%d %H:%M:%S UTC')}",
        "",
        f"- command: `{command_line()}`",
        f"- load: `{shlex.join(wrk_argv(args, 0, 'keyed', 'TAG', args.duration))}` "
        f"(PORT 0 here: each router's; `plain` instead of `keyed`: no header) after a "
        f"{args.warmup:g} s warmup each; {args.repeats} rounds of "
        f"{', '.join(n for n in MODES if n in modes)}, the order reversed every other round",
        "- router: `profile: waha` (session in the body), Redis store (redis-server with "
        "appendonly, no other client), metrics on, 3 nginx backends answering every POST "
        "with a tiny JSON",
        f"- machine: {info['nproc']} CPUs ({info['cpu']}), {info['python']}, {info['redis']}, "
        f"wa-router {info['wa-router']}",
        "",
        "| round | order | plain req/s | keyed req/s | keyed / plain | router CPU per response, "
        "plain / keyed | redis CPU, keyed | p99, plain / keyed |"
        + (" nokeys req/s | plain / nokeys |" if nokeys else ""),
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |" + (" ---: | ---: |" if nokeys else ""),
    ]
    ratios = raw["keyed_ratio"]["per_round"]
    for i, (a, b) in enumerate(zip(plain.runs, keyed.runs, strict=False)):
        order = ", ".join(round_order(i + 1, [n for n in MODES if n in modes]))
        row = (
            f"| {i + 1} | {order} | {a.rps:,.0f} | {b.rps:,.0f} | {ratios[i]:.3f} "
            f"| {a.cpu_us:.1f} / {b.cpu_us:.1f} us | {fmt_pct(b.redis_cpu)} "
            f"| {fmt_us(a.wrk.latency_us['99'])} / {fmt_us(b.wrk.latency_us['99'])} |"
        )
        if nokeys is not None and i < len(nokeys.runs):
            n = nokeys.runs[i]
            row += f" {n.rps:,.0f} | {a.rps / n.rps:.3f} |"
        lines.append(row)
    kr = raw["keyed_ratio"]
    median = kr["median"]
    ci = kr["ci95"]
    if median is None:
        verdict = "n/a"
    elif median < KEYED_TARGET:
        verdict = "MISSED"
    elif ci is not None and ci[0] < KEYED_TARGET:
        verdict = "met (not resolved: the interval reaches below the target)"
    else:
        verdict = "met"
    interval = (
        f"95% bootstrap interval {ci[0]:.3f}-{ci[1]:.3f}"
        if ci is not None
        else f"no interval with fewer than {MIN_ROUNDS_CI} rounds"
    )
    cpu = raw["cpu_ratio_plain_over_keyed"]["median"]
    lines += [
        "",
        f"- keyed / plain: **{median:.3f}** (median of the per-round ratios; {interval}; "
        f"medians {keyed.median('rps'):,.0f} / {plain.median('rps'):,.0f} req/s); target >= "
        f"{KEYED_TARGET}: {verdict}",
        f"- router CPU per response: plain {plain.median('cpu_us'):.1f} us, keyed "
        f"{keyed.median('cpu_us'):.1f} us (median per-round plain / keyed "
        + (f"{cpu:.3f}" if cpu is not None else "-")
        + "); redis-server CPU during keyed runs "
        + ", ".join(fmt_pct(r.redis_cpu) for r in keyed.runs),
        f"- keyed requests really keyed: {raw['keyed_keys_added']:,} keys added over "
        f"{raw['keyed_requests']:,} responses in the measured runs (each run: at least one new "
        f"key per response, at most {args.connections} more for requests in flight at its "
        f"end; and the backends served at least one request per response); replays: "
        f"**{raw['replays']}** (over every keyed run, warmups included)",
    ]
    if nokeys is not None and raw.get("nokeys_ratio", {}).get("median") is not None:
        nr = raw["nokeys_ratio"]
        lines.append(
            f"- plain / nokeys (a POST without the header, keys on / off): {nr['median']:.3f} "
            f"(median of the per-round ratios; per round "
            f"{', '.join(f'{x:.3f}' for x in nr['per_round'])}): for information; the 2% "
            "target is judged by the proxy benchmark's router / router-nokeys"
        )
    keys = raw.get("keys") or {}
    lines.append(
        f"- keys in Redis at the end: {keys.get('total', 0):,} ("
        + (", ".join(f"{k} {v:,}" for k, v in sorted(keys.get("states", {}).items())) or "-")
        + "; the checks' keys and every run's, warmups included; outcomes of requests wrk "
        "left in flight at the end of a run are unknown or in flight)"
    )
    lines += noisy_note(r.others_cpu for m in modes.values() for r in m.runs)
    if any(r.others_cpu > NOISY for m in modes.values() for r in m.runs):
        lines.append("(runs are measured again when others take over 10% of a core; the "
                     "quietest attempt is kept)")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--duration", type=float, default=8, help="seconds per measured run (8)")
    p.add_argument("--warmup", type=float, default=2, help="seconds of warmup before each run (2)")
    p.add_argument("--connections", type=int, default=32, help="wrk -c (32)")
    p.add_argument("--threads", type=int, default=1, help="wrk -t (1)")
    p.add_argument("--sessions", type=int, default=1000, help="sessions s-1..s-N (1000)")
    p.add_argument("--repeats", type=int, default=5, help="interleaved rounds (5)")
    p.add_argument("--no-nokeys", dest="nokeys", action="store_false",
                   help="leave out the router with listen.idempotency_keys: false")  # fmt: skip
    common_args(p)
    args = p.parse_args(argv)
    if args.duration <= 0 or args.warmup < 0 or args.repeats < 1 or args.sessions < 1:
        p.error("--duration and --repeats must be positive, --sessions >= 1, --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    return run_main("idempotency", parse_args(argv), run, tools=("nginx", "wrk", "redis-server"))


if __name__ == "__main__":
    sys.exit(main())
