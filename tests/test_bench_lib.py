"""bench/lib, the code the benchmarks and the process tests share: its config writer makes
configs the router loads, its wrk parser reads wrk's summary, and its noisy-machine rerun
keeps the quietest attempt within its bounds."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

import bench.lib.noisy as noisy
from bench.lib.configs import instance_url, redis_args, redis_url, router_yaml
from bench.lib.ports import free_ports
from bench.lib.procs import Processes
from bench.lib.wrk import parse_wrk
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
