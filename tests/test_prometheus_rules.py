"""Alerting rules and the sample Grafana dashboard (issue 7).

* ``promtool check rules`` accepts ``config/prometheus/alerts.yml`` and ``promtool test
  rules`` passes its unit tests (``alerts.test.yml``: the alerts fire on the series the
  router exports, after their ``for:``). Skipped only when ``promtool`` (Debian package
  ``prometheus``) is not installed.
* Every metric name the rules and the dashboard use is one ``router/metrics.py`` exports,
  with the suffix its type gives it (counters ``_total``, histograms ``_bucket``/``_sum``/
  ``_count``): renaming a metric breaks this test instead of silently muting an alert.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.system  # real processes (see tests/conftest.py: layers)

ROOT = Path(__file__).resolve().parent.parent
RULES = Path("config/prometheus/alerts.yml")
RULE_TESTS = Path("config/prometheus/alerts.test.yml")
DASHBOARD = Path("config/grafana/wa-router-dashboard.json")
METRICS_SRC = ROOT / "router" / "metrics.py"

METRIC_RE = re.compile(r"\brouter_[a-z_]+")
SUFFIXES = {
    "counter": ("_total",),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count"),
}
# Alerts an operator needs (issue 7); the file may have more.
REQUIRED_ALERTS = {
    "WaRouterDown",
    "WaRouterInstanceDown",
    "WaRouterNoHealthyInstance",
    "WaRouterFailoverTooLong",
    "WaRouterWebhookBacklog",
    "WaRouterWebhookDeadLetters",
    "WaRouterStoreDown",
    "WaRouterRestoreFailures",
    "WaRouterHighErrorRate",
    "WaRouterConfigReloadFailed",
    "WaRouterNoLeader",
}

promtool = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    promtool is None,
    reason="promtool not installed (Debian package `prometheus`; .ci/run installs it)",
)


def run_promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert promtool is not None
    return subprocess.run(
        [promtool, *args], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )


def assert_ok(proc: subprocess.CompletedProcess[str]) -> None:
    output = f"$ {' '.join(proc.args)}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    print(output)
    assert proc.returncode == 0, output


@needs_promtool
def test_promtool_check_rules() -> None:
    proc = run_promtool("check", "rules", str(RULES))
    assert_ok(proc)
    assert "SUCCESS" in proc.stdout


@needs_promtool
def test_promtool_rule_unit_tests() -> None:
    assert_ok(run_promtool("test", "rules", str(RULE_TESTS)))


def exported_metrics() -> set[str]:
    """Sample names ``router/metrics.py`` exports, read from its source: each quoted
    ``router_*`` family name, typed by the ``*MetricFamily(`` call it is the first argument
    of, or else by the next one after it (names listed in a tuple, then built in a loop)."""
    src = METRICS_SRC.read_text()
    family_re = re.compile(r"\b(Counter|Gauge|Histogram)MetricFamily\(")
    out: set[str] = set()
    for m in re.finditer(r'"(router_[a-z_]+)"', src):
        before = re.search(r"\b(Counter|Gauge|Histogram)MetricFamily\(\s*$", src[: m.start()])
        after = family_re.search(src, m.end())
        kind = before or after
        assert kind is not None, f"cannot tell the type of {m.group(1)} in router/metrics.py"
        for suffix in SUFFIXES[kind.group(1).lower()]:
            out.add(m.group(1) + suffix)
    return out


def test_exported_metrics_parse() -> None:
    """The source parse above finds what the README documents, with the right suffixes."""
    names = exported_metrics()
    for expected in (
        "router_requests_total",
        "router_instance_up",
        "router_webhook_backlog",
        "router_webhooks_dead_total",
        "router_request_duration_seconds_bucket",
        "router_instance_request_duration_seconds_bucket",
        "router_config_reloads_total",
    ):
        assert expected in names, sorted(names)
    assert "router_instance_up_total" not in names
    assert "router_requests" not in names


def used_metrics(exprs: list[str]) -> set[str]:
    return {name for e in exprs for name in METRIC_RE.findall(e)}


def rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load((ROOT / RULES).read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def test_rules_use_only_exported_metrics() -> None:
    exprs = [str(rule["expr"]) for rule in rules()]
    used = used_metrics(exprs)
    assert len(used) >= 10, used
    unknown = used - exported_metrics()
    assert not unknown, f"alerts.yml uses metrics router/metrics.py does not export: {unknown}"


def test_rules_cover_the_issue() -> None:
    all_rules = rules()
    names = {rule.get("alert") for rule in all_rules}
    missing = REQUIRED_ALERTS - names
    assert not missing, missing
    for rule in all_rules:
        assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
        assert {"summary", "description"} <= set(rule["annotations"]), rule["alert"]
    # Every alert is exercised by at least one firing case in the promtool unit tests.
    tests = yaml.safe_load((ROOT / RULE_TESTS).read_text())["tests"]
    fired = {
        case["alertname"]
        for group in tests
        for case in group.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert names <= fired, f"alerts without a firing unit test: {names - fired}"


def panel_targets(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield from panel.get("targets", [])
        yield from panel_targets(panel.get("panels", []))


def dashboard() -> dict[str, Any]:
    with (ROOT / DASHBOARD).open() as f:
        doc: dict[str, Any] = json.load(f)
    return doc


def dashboard_exprs() -> list[str]:
    doc = dashboard()
    return [t["expr"] for t in panel_targets(doc["panels"])]


def test_dashboard_uses_only_exported_metrics() -> None:
    doc = dashboard()
    exprs = dashboard_exprs()
    assert len(exprs) >= 15
    variables = [v.get("definition", "") for v in doc["templating"]["list"]]
    used = used_metrics(exprs + variables)
    for needed in (
        "router_instance_up",
        "router_instance_sessions",
        "router_requests_total",
        "router_request_duration_seconds_bucket",
        "router_instance_request_duration_seconds_bucket",
        "router_held_requests",
        "router_failovers_total",
        "router_session_moves_total",
        "router_webhooks_received_total",
        "router_webhooks_delivered_total",
        "router_webhooks_retried_total",
        "router_webhooks_dead_total",
        "router_webhook_backlog",
    ):
        assert needed in used, needed
    unknown = used - exported_metrics()
    assert not unknown, f"the dashboard uses metrics router/metrics.py does not export: {unknown}"


def test_dashboard_datasource_is_a_variable() -> None:
    doc = dashboard()
    names = {v["name"] for v in doc["templating"]["list"]}
    assert "DS_PROMETHEUS" in names
    for panel in doc["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
        for t in panel["targets"]:
            assert t["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"


@needs_promtool
def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """Each panel query, with Grafana's variables filled in, parses as PromQL (checked by
    promtool as a recording rule)."""
    subst = {"$__rate_interval": "5m", "$job": ".*", "$router": ".*", "$instance": ".*"}
    records = []
    for i, expr in enumerate(dashboard_exprs()):
        for var, value in subst.items():
            expr = expr.replace(var, value)
        assert "$" not in expr, expr
        records.append({"record": f"dashboard:query_{i}", "expr": expr})
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": records}]}))
    assert_ok(run_promtool("check", "rules", str(path)))
