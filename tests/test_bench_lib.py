"""bench/lib, the code the benchmarks and the process tests share: its config writer makes
configs the router loads, its wrk parser reads wrk's summary, and its noisy-machine rerun
keeps the quietest attempt within its bounds."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

import bench.lib.noisy as noisy
from bench import idempotency_bench, proxy_bench
from bench.lib.configs import instance_url, redis_args, redis_url, router_yaml
from bench.lib.ports import free_ports
from bench.lib.procs import Processes
from bench.lib.wrk import WrkResult, parse_wrk
from bench.proxy_results import KEYS_PAIR, Target, keys_cost
from bench.suite_targets import _ratio_verdict
from router.config import parse_config
from tests.procs import Proc, router_config

WRK_OUTPUT = """Running 3s test @ http://127.0.0.1:40001/v1/bench
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.02ms  350.12us   9.81ms   80.00%
    Req/Sec    31.20k     1.10k   33.00k    70.00%
  Latency Distribution
     50%  0.97ms
     75%    1.15ms
     90%    1.40ms
     99%    2.31ms
  93120 requests in 3.00s, 14.21MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 5
Requests/sec:  31035.52
Transfer/sec:      4.74MB
"""


def test_router_yaml_is_a_config_the_router_loads() -> None:
    text = router_yaml(
        8080, 8081, [("b1", instance_url(9001)), ("b2", instance_url(9002))], workers=2,
        profile="generic", log_level="WARNING", store_url=redis_url(6379),
        store_prefix="bench:", metrics=False, extra="health: {interval: 60s}\n",
    )  # fmt: skip
    config = parse_config(text, env={})
    assert (config.listen.port, config.listen.workers, config.admin.port) == (8080, 2, 8081)
    assert [i.name for i in config.instances] == ["b1", "b2"]
    assert config.store.url is not None and config.store.url.value == "redis://127.0.0.1:6379/0"
    assert config.store.prefix == "bench:"
    assert config.metrics.enabled is False


def test_the_tests_router_config_keeps_its_text() -> None:
    # Tests edit this text (``.replace`` of the admin line) and fill the two placeholders.
    sims = [Proc(None, 3001, "n1"), Proc(None, 3002, "n2")]  # type: ignore[arg-type]
    assert router_config(sims, "log: {level: DEBUG}\n", ", weight: 2") == (
        "listen: {host: 127.0.0.1, port: {port}}\n"
        "admin: {host: 127.0.0.1, port: {admin_port}}\n"
        "instances:\n"
        "  - {name: n1, url: 'http://127.0.0.1:3001', weight: 2}\n"
        "  - {name: n2, url: 'http://127.0.0.1:3002', weight: 2}\n"
        "log: {level: DEBUG}\n"
    )


def test_free_ports_are_distinct_loopback_ports() -> None:
    ports = free_ports(20)
    assert len(set(ports)) == 20 and all(1024 <= p <= 65535 for p in ports)


def test_redis_args_run_in_the_foreground_on_loopback(tmp_path: Path) -> None:
    argv = redis_args(tmp_path / "data", 7000, appendonly=False)
    flags = dict(zip(argv[1::2], argv[2::2], strict=True))
    assert argv[0] == "redis-server" and (tmp_path / "data").is_dir()
    assert flags["--bind"] == "127.0.0.1" and flags["--daemonize"] == "no"
    assert flags["--appendonly"] == "no" and flags["--save"] == ""


def test_parse_wrk_reads_rate_percentiles_and_errors() -> None:
    r = parse_wrk(WRK_OUTPUT)
    assert (r.rps, r.requests) == (31035.52, 93120)
    assert r.latency_us == {"50": 970.0, "75": 1150.0, "90": 1400.0, "99": 2310.0}
    assert r.socket_errors == {"connect": 0, "read": 2, "write": 0, "timeout": 1}
    assert r.non2xx == 5 and r.errors == 8


@pytest.mark.parametrize(
    ("others", "retries", "runs", "kept"),
    [
        ([0.05, 0.5], 2, 1, 0.05),  # quiet at once: one run
        ([0.5, 0.2, 0.3], 2, 3, 0.2),  # noisy every time: every retry, the quietest kept
        ([0.5, 0.04, 0.3], 2, 2, 0.04),  # quiet on the second: stops there
        ([0.5, 0.2], 0, 1, 0.5),  # no retries
    ],
)
def test_measure_quietly_reruns_noisy_runs_and_keeps_the_quietest(
    monkeypatch: pytest.MonkeyPatch, others: list[float], retries: int, runs: int, kept: float
) -> None:
    monkeypatch.setattr(noisy, "wait_quiet", lambda procs, max_wait: 0.0)  # no sleeping here
    args = argparse.Namespace(wait_quiet=0.0, noisy_retries=retries)
    attempts: list[int] = []

    def run(quiet: float, attempt: int) -> float:
        attempts.append(attempt)
        return others[attempt]

    best, discarded = noisy.measure_quietly(Processes(), args, run, lambda o: o, "t")
    assert attempts == list(range(runs))
    assert best == kept and sorted([best, *discarded]) == sorted(others[:runs])


def test_warmups_are_never_run_again(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(noisy, "wait_quiet", lambda procs, max_wait: 0.0)
    args = argparse.Namespace(wait_quiet=0.0, noisy_retries=5)
    best, discarded = noisy.measure_quietly(
        Processes(), args, lambda quiet, attempt: 0.9, lambda o: o, "warmup", retries=False
    )
    assert (best, discarded) == (0.9, [])


def test_router_yaml_turns_idempotency_keys_off() -> None:
    instances = [("b1", instance_url(9001))]
    assert parse_config(router_yaml(8080, 8081, instances), env={}).listen.idempotency_keys
    off = router_yaml(8080, 8081, instances, workers=2, store_url=redis_url(6379),
                      idempotency_keys=False)
    config = parse_config(off, env={})
    assert config.listen.idempotency_keys is False and config.listen.workers == 2


def _target(name: str, *rps: float) -> Target:
    t = Target(name, name, 1, None)
    t.runs = [WrkResult(rps=r, requests=int(r), latency_us={"50": 1.0, "99": 2.0}, non2xx=0,
                        socket_errors={}) for r in rps]  # fmt: skip
    return t


def test_the_paired_routers_run_in_reverse_order_every_other_round() -> None:
    targets = [_target(n) for n in ("nginx", "router-nokeys", "router", "router-nometrics",
                                    "router-redis")]  # fmt: skip
    names = [[t.name for t in proxy_bench.round_order(targets, rnd)] for rnd in (1, 2, 3)]
    assert names[0] == names[2] == [t.name for t in targets]
    assert names[1] == ["nginx", "router-nometrics", "router", "router-nokeys", "router-redis"]
    two = [t for t in targets if t.name in ("nginx", "router", "router-nometrics")]
    assert [t.name for t in proxy_bench.round_order(two, 2)] == [
        "nginx", "router-nometrics", "router"]


def test_keys_cost_is_the_median_of_the_per_round_ratios() -> None:
    on, off = _target(KEYS_PAIR[0], 99, 100, 90), _target(KEYS_PAIR[1], 100, 100, 100)
    cost = keys_cost([on, off])
    assert cost is not None
    assert cost["per_round_ratio"] == [0.99, 1.0, 0.9] and cost["median_ratio"] == 0.99
    assert cost["target"] == 0.98 and cost["ok"] is True
    assert keys_cost([on]) is None


def test_a_keyed_run_adds_one_key_per_response_and_at_most_one_per_request_in_flight() -> None:
    assert idempotency_bench.key_bounds(1000, 1000, 32) == []
    assert idempotency_bench.key_bounds(1000, 1032, 32) == []
    assert "replayed" in idempotency_bench.key_bounds(1000, 999, 32)[0]
    assert "in flight" in idempotency_bench.key_bounds(1000, 1033, 32)[0]


def test_idempotency_rounds_alternate_and_ratios_pair_up() -> None:
    modes = ["plain", "keyed", "nokeys"]
    assert idempotency_bench.round_order(1, modes) == modes
    assert idempotency_bench.round_order(2, modes) == ["nokeys", "keyed", "plain"]
    r = idempotency_bench.ratio_summary([7.0, 8.0, 9.0], [10.0, 10.0, 10.0])
    assert r["per_round"] == [0.7, 0.8, 0.9] and r["median"] == 0.8 and r["ci95"] is None
    six = idempotency_bench.ratio_summary([7.0] * 6, [10.0] * 6)
    assert six["ci95"] == (0.7, 0.7)


@pytest.mark.parametrize(
    ("ratio", "ci", "rounds", "verdict"),
    [
        (0.8, [0.75, 0.85], 6, "met"),
        (0.8, [0.65, 0.85], 6, "met (not resolved: the interval reaches below 0.7)"),
        (0.65, [0.6, 0.72], 6, "not resolved (the interval reaches 0.7)"),
        (0.65, [0.6, 0.68], 6, "MISSED"),
        (0.8, [0.65, 0.85], 3, "met"),  # too few rounds for an interval
    ],
)
def test_a_ratio_is_met_only_when_its_interval_clears_the_target(
    ratio: float, ci: list[float], rounds: int, verdict: str
) -> None:
    assert _ratio_verdict(ratio, ci, rounds, 0.7)[0] == verdict
