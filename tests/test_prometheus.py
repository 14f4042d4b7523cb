"""Metrics contract: every documented metric on the admin port after real traffic, the text
valid for ``promtool``, and a real Prometheus server scraping it (``up == 1``).

Real processes on loopback: simulators, a router, a webhook target in the test, and the
Debian ``prometheus`` binary (``.ci/run`` installs it; the scrape test is skipped only when
the binary is absent).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from tests.procs import Proc, RouterProc, free_port, router_config, wait_http

pytestmark = pytest.mark.system  # real processes (see tests/conftest.py: layers)

SESSIONS = ("s1", "s2", "s3", "s4")

# Family name (as prometheus_client's parser reports it: counters lose ``_total``) -> type,
# the label names its samples carry, and whether samples are required after the traffic
# below. Failovers and session moves only count events this test does not cause, so only
# their family (HELP/TYPE) is required.
CONTRACT: dict[str, tuple[str, frozenset[str], bool]] = {
    "router_requests": ("counter", frozenset({"instance", "code"}), True),
    "router_request_duration_seconds": ("histogram", frozenset(), True),
    "router_instance_up": ("gauge", frozenset({"instance"}), True),
    "router_instance_sessions": ("gauge", frozenset({"instance"}), True),
    "router_failovers": ("counter", frozenset({"instance"}), False),
    "router_session_moves": ("counter", frozenset({"reason"}), False),
    "router_held_requests": ("gauge", frozenset(), True),
    "router_webhooks_received": ("counter", frozenset(), True),
    "router_webhooks_delivered": ("counter", frozenset(), True),
    "router_webhooks_retried": ("counter", frozenset(), True),
    "router_webhooks_dead": ("counter", frozenset(), True),
    "router_webhook_backlog": ("gauge", frozenset(), True),
    "router_config_reloads": ("counter", frozenset({"result"}), True),
}


@dataclass
class Hook:
    port: int = field(default_factory=free_port)
    bodies: list[bytes] = field(default_factory=list)
    got: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.Response:
        self.bodies.append(await request.read())
        self.got.set()
        return web.Response(status=200)


@pytest.fixture
async def hook() -> AsyncIterator[Hook]:
    h = Hook()
    app = web.Application()
    app.router.add_post("/hook", h.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", h.port).start()
    yield h
    await runner.cleanup()


def _samples(text: str) -> dict[str, list[tuple[str, dict[str, str], float]]]:
    """Family name -> [(sample name, labels, value)]; also records each family's type."""
    out: dict[str, list[tuple[str, dict[str, str], float]]] = {}
    for fam in text_string_to_metric_families(text):
        out[fam.name] = [(s.name, dict(s.labels), s.value) for s in fam.samples]
        out[fam.name + ":type"] = [(fam.type, {}, 0.0)]
    return out


async def _scrape(http: aiohttp.ClientSession, r: RouterProc) -> str:
    async with http.get(r.admin_url + "/metrics") as resp:
        assert resp.status == 200
        assert resp.content_type == "text/plain", resp.content_type
        return await resp.text()


def _value(fams: dict[str, list[tuple[str, dict[str, str], float]]], name: str) -> float:
    return next(v for n, _, v in fams.get(name.removesuffix("_total"), []) if n == name)


@pytest.mark.timeout(60)
async def test_every_contract_metric_after_traffic(
    three_sims: list[Proc], router_factory: Callable[..., RouterProc], hook: Hook
) -> None:
    r = router_factory(router_config(three_sims, f"""webhooks:
  targets:
    - {{url: 'http://127.0.0.1:{hook.port}/hook'}}
"""))
    names = {s.name for s in three_sims}
    async with aiohttp.ClientSession() as http:
        for s in SESSIONS:
            async with http.post(r.url + "/api/sessions", json={"name": s}) as resp:
                assert resp.status == 201, await resp.text()
            for _ in range(3):
                async with http.get(r.url + f"/api/sessions/{s}") as resp:
                    assert resp.status == 200, await resp.text()
                    assert resp.headers["X-Router-Instance"] in names
        event = {"id": "evt1", "event": "message", "session": "s1", "payload": {}}
        async with http.post(r.url + "/webhooks", json=event) as resp:
            assert resp.status == 200, await resp.text()
        await asyncio.wait_for(hook.got.wait(), 15)
        assert json.loads(hook.bodies[0])["id"] == "evt1"

        # The target answered; the relay counts the delivery once it has the answer, so poll
        # the scrape (bounded) rather than assume the counter is already there.
        deadline = asyncio.get_running_loop().time() + 10
        while True:
            text = await _scrape(http, r)
            fams = _samples(text)
            if _value(fams, "router_webhooks_delivered_total") >= 1:
                break
            assert asyncio.get_running_loop().time() < deadline, text
            await asyncio.sleep(0.05)

    missing = [n for n in CONTRACT if n not in fams]
    assert not missing, f"contract metrics missing from /metrics: {missing}\n{text}"
    for name, (kind, labels, need_samples) in CONTRACT.items():
        assert fams[name + ":type"][0][0] == kind, (name, fams[name + ":type"])
        samples = fams[name]
        if need_samples:
            assert samples, f"{name}: no samples after traffic"
        for sample_name, sample_labels, _ in samples:
            assert sample_name.startswith(name), (name, sample_name)
            assert labels <= set(sample_labels), (name, sample_labels)
            if kind == "counter":
                assert sample_name == name + "_total", sample_name  # the exposed name

    # Per-instance series: one per configured instance, each up, sessions adding up.
    up = {lb["instance"]: v for _, lb, v in fams["router_instance_up"]}
    assert up == dict.fromkeys(names, 1.0)
    held = {lb["instance"]: v for _, lb, v in fams["router_instance_sessions"]}
    assert set(held) == names and sum(held.values()) == len(SESSIONS)

    # Requests: 201s and 200s from real instances, every proxied request counted.
    requests = [(lb["instance"], lb["code"], v) for n, lb, v in fams["router_requests"]
                if n == "router_requests_total"]
    assert any(i in names and c == "200" and v >= 1 for i, c, v in requests), requests
    assert sum(v for i, c, v in requests if i in names and c == "200") == 3 * len(SESSIONS)
    assert sum(v for i, c, v in requests if i in names and c == "201") == len(SESSIONS)
    hist = {n: v for n, lb, v in fams["router_request_duration_seconds"] if not lb.get("le")}
    buckets = {lb["le"]: v for n, lb, v in fams["router_request_duration_seconds"]
               if n.endswith("_bucket")}
    assert hist["router_request_duration_seconds_count"] >= 4 * len(SESSIONS), hist
    assert buckets["+Inf"] == hist["router_request_duration_seconds_count"]

    assert _value(fams, "router_webhooks_received_total") == 1
    assert _value(fams, "router_webhooks_delivered_total") == 1
    assert _value(fams, "router_webhooks_dead_total") == 0
    assert _value(fams, "router_webhook_backlog") == 0
    assert _value(fams, "router_held_requests") == 0
    results = {lb["result"] for _, lb, _ in fams["router_config_reloads"]}
    assert results == {"success", "error"}

    promtool = shutil.which("promtool")
    if promtool is not None:
        # ``check metrics`` lints the exposition: a parse error or a lint finding (names,
        # units, HELP) both exit non-zero. The router's text has neither, so any output
        # at all is a regression worth seeing.
        proc = await asyncio.create_subprocess_exec(
            promtool, "check", "metrics", stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await asyncio.wait_for(proc.communicate(text.encode()), 30)
        report = out.decode(errors="replace")
        assert proc.returncode == 0, f"promtool check metrics:\n{report}"


# -- a real Prometheus server -----------------------------------------------------------------


def _get_json(url: str) -> dict[str, object]:
    with urllib.request.urlopen(url, timeout=5) as resp:
        data: dict[str, object] = json.loads(resp.read())
        return data


@dataclass
class Prometheus:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    def query(self, promql: str) -> list[dict[str, object]]:
        q = urllib.parse.urlencode({"query": promql})
        data = _get_json(f"http://127.0.0.1:{self.port}/api/v1/query?{q}")
        assert data["status"] == "success", data
        result = data["data"]["result"]  # type: ignore[index]
        assert isinstance(result, list)
        return result

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def prometheus_factory(tmp_path: Path) -> Iterator[Callable[[int], Prometheus]]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("the `prometheus` binary is not on PATH (Debian package `prometheus`; "
                    ".ci/run installs it)")
    started: list[Prometheus] = []

    def start(admin_port: int) -> Prometheus:
        config = tmp_path / "prometheus.yml"
        config.write_text(f"""global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: wa-router
    metrics_path: /metrics
    static_configs:
      - targets: ['127.0.0.1:{admin_port}']
""")
        port = free_port()
        log = tmp_path / "prometheus.log"
        proc = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=log.open("ab"), stderr=subprocess.STDOUT, cwd=tmp_path,
        )
        p = Prometheus(proc, port, log)
        started.append(p)
        try:
            wait_http(f"http://127.0.0.1:{port}/-/ready", timeout=30, proc=proc)
        except Exception as e:
            raise RuntimeError(f"prometheus did not become ready: {e}\n{p.output()}") from None
        return p

    yield start
    for p in started:
        if p.proc.poll() is None:
            p.proc.terminate()
            try:
                p.proc.wait(10)
            except subprocess.TimeoutExpired:
                p.proc.kill()
                p.proc.wait()


def _poll(what: str, cond: Callable[[], object], timeout: float, prom: Prometheus) -> object:
    """``cond()`` until it returns something truthy, within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        last = cond()
        if last:
            return last
        assert prom.proc.poll() is None, f"prometheus exited:\n{prom.output()}"
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}; last: {last}\n{prom.output()[-4000:]}")


# Worst case: router start (15 s) + prometheus ready (30 s) + up (30 s) + series (15 s).
@pytest.mark.timeout(120)
def test_prometheus_scrapes_the_admin_port(
    three_sims: list[Proc], router_factory: Callable[..., RouterProc],
    prometheus_factory: Callable[[int], Prometheus],
) -> None:
    r = router_factory(router_config(three_sims))
    prom = prometheus_factory(r.admin_port)
    target = f"127.0.0.1:{r.admin_port}"

    def up() -> list[dict[str, object]]:
        return [s for s in prom.query('up{job="wa-router"}')
                if s["metric"]["instance"] == target and s["value"][1] == "1"]  # type: ignore[index]

    _poll("up == 1 for the router's admin port", up, 30, prom)

    # Prometheus attaches its own `instance` target label (host:port) to every scraped
    # series, so with a default scrape config the router's per-instance label arrives as
    # `exported_instance` (honor_labels: true would keep the router's name instead).
    names = {s.name for s in three_sims}

    def series() -> set[str]:
        found = prom.query(f'router_instance_up{{job="wa-router",instance="{target}"}}')
        labels = {s["metric"].get("exported_instance", "") for s in found}  # type: ignore[attr-defined]
        return labels if labels == names and len(found) == len(names) else set()

    _poll("one router_instance_up series per simulator", series, 15, prom)
    assert r.proc.poll() is None
