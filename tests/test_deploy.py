"""The example deployment (deploy/) parses against its schemas, and the router configs it
carries pass check-config, so neither can rot unnoticed."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from router.config import ConfigError, load_config
from router.config.loader import load_agent_config

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
BIN = Path(sys.executable).parent
K8S_VERSION = "1.30.0"  # the oldest Kubernetes the manifests are meant for (sidecar-era APIs)

# Values for every ${VAR} the examples use (check-config needs them set).
ENV = {
    "ROUTER_CLIENT_KEY": "k", "ROUTER_ADMIN_TOKEN": "t", "WAHA_API_KEY": "w",
    "WAHA_HOOK_HMAC_KEY": "h", "APP_WEBHOOK_URL": "https://app.example/hook",
    "APP_WEBHOOK_HMAC_KEY": "a", "POSTGRES_PASSWORD": "p",
}


def _tool(name: str) -> str:
    path = BIN / name
    if not path.exists():
        found = shutil.which(name)
        assert found, f"{name} is a test dependency (pyproject [test]); it is not installed"
        return found
    return str(path)


def _manifests() -> list[Path]:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    return [K8S / name for name in kustomization["resources"]]


def test_kustomization_lists_every_manifest() -> None:
    listed = {p.name for p in _manifests()}
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk
    assert all(p.exists() for p in _manifests())


def _k8s_validate(files: list[Path]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_tool("kubernetes-validate"), "--strict", "-k", K8S_VERSION, *map(str, files)],
        capture_output=True, text=True, timeout=120,
    )


def test_kubernetes_manifests_validate() -> None:
    r = _k8s_validate(_manifests())
    assert r.returncode == 0, r.stdout + r.stderr
    kinds = set(re.findall(r"for resource (\w+)/", r.stdout))
    assert kinds >= {"deployment", "service", "configmap", "secret", "poddisruptionbudget",
                     "statefulset"}, r.stdout


def test_kubernetes_validation_catches_a_mistake(tmp_path: Path) -> None:
    # The validator is strict: a misspelt field fails (so the test above can fail).
    bad = tmp_path / "deployment.yaml"
    bad.write_text((K8S / "deployment.yaml").read_text().replace("readinessProbe", "readynessProbe"))
    assert _k8s_validate([bad]).returncode != 0


def _compose_validate(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True, text=True, timeout=120,
    )


def test_compose_file_validates() -> None:
    r = _compose_validate(DEPLOY / "compose.yaml")
    assert r.returncode == 0, r.stdout + r.stderr


def test_compose_validation_catches_a_mistake(tmp_path: Path) -> None:
    bad = tmp_path / "compose.yaml"
    bad.write_text((DEPLOY / "compose.yaml").read_text().replace("healthcheck:", "helthcheck:", 1))
    assert _compose_validate(bad).returncode != 0


def _compose() -> dict[str, object]:
    doc = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    assert isinstance(doc, dict)
    return doc


def test_compose_wires_router_redis_and_instances() -> None:
    services = _compose()["services"]
    assert isinstance(services, dict)
    assert "--appendonly" in services["redis"]["command"]
    wahas = [s for name, s in services.items() if name.startswith("waha-")]
    assert len(wahas) == 2
    worker_ids = {w["environment"]["WAHA_WORKER_ID"] for w in wahas}
    assert len(worker_ids) == 2  # one WAHA_WORKER_ID per instance on the shared storage
    for w in wahas:
        env = w["environment"]
        assert env["WHATSAPP_HOOK_URL"] == "http://router:8080/webhooks"
        assert "WHATSAPP_SESSIONS_POSTGRESQL_URL" in env
    mount = services["router"]["volumes"][0]
    assert mount.startswith("./compose/router.yaml:/etc/wa-router/config.yaml")


def _check(path: Path) -> list[str]:
    """check-config's verdict on ``path``; the names of its instances."""
    try:
        config = load_config(path, env=ENV)
    except ConfigError as e:
        pytest.fail(f"{path}: " + "; ".join(e.problems))
    assert config.store.url and config.listen.workers == 2
    return [i.name for i in config.instances]


def test_compose_router_config_is_valid() -> None:
    instances = _check(DEPLOY / "compose" / "router.yaml")
    services = _compose()["services"]
    assert isinstance(services, dict)
    assert set(instances) == {n for n in services if n.startswith("waha-")}


def test_kubernetes_router_config_is_valid(tmp_path: Path) -> None:
    cm = yaml.safe_load((K8S / "configmap.yaml").read_text())
    path = tmp_path / "config.yaml"
    path.write_text(cm["data"]["config.yaml"])
    assert len(_check(path)) == 2
    secret = yaml.safe_load((K8S / "secret.yaml").read_text())
    used = set(re.findall(r"\$\{(\w+)", cm["data"]["config.yaml"]))
    assert used <= set(secret["stringData"]), used - set(secret["stringData"])


def _agent_check(path: Path, env: dict[str, str]) -> str:
    try:
        config = load_agent_config(path, env={**ENV, **env})
    except ConfigError as e:
        pytest.fail(f"{path}: " + "; ".join(e.problems))
    assert config.agent is not None and config.store.url is not None
    return config.agent.instance


def test_compose_agents_are_sidecars_of_their_instances() -> None:
    """One agent per instance, in the instance's network namespace (a partition cuts both),
    with the name the router's config gives the instance, and restarted if it dies."""
    services = _compose()["services"]
    assert isinstance(services, dict)
    agents = {n: s for n, s in services.items() if n.startswith("agent-")}
    router_names = set(_check(DEPLOY / "compose" / "router.yaml"))
    named = set()
    for agent in agents.values():
        instance = agent["environment"]["INSTANCE_NAME"]
        assert agent["network_mode"] == f"service:{instance}"
        assert agent["restart"] in ("always", "unless-stopped")
        assert "./compose/agent.yaml:/etc/wa-router/agent.yaml:ro" in agent["volumes"]
        named.add(_agent_check(DEPLOY / "compose" / "agent.yaml", {"INSTANCE_NAME": instance}))
    assert named == router_names


def test_kubernetes_agent_is_a_native_sidecar_of_each_waha_pod(tmp_path: Path) -> None:
    docs = list(yaml.safe_load_all((K8S / "waha.yaml").read_text()))
    sts = next(d for d in docs if d["kind"] == "StatefulSet")
    cm = next(d for d in docs if d["kind"] == "ConfigMap")
    pod = sts["spec"]["template"]["spec"]
    (agent,) = pod["initContainers"]
    assert agent["restartPolicy"] == "Always" and agent["args"][0] == "agent"
    path = tmp_path / "agent.yaml"
    path.write_text(cm["data"]["agent.yaml"])
    router_cm = yaml.safe_load((K8S / "configmap.yaml").read_text())
    router_cfg = tmp_path / "config.yaml"
    router_cfg.write_text(router_cm["data"]["config.yaml"])
    pods = {f"{sts['metadata']['name']}-{i}" for i in range(sts["spec"]["replicas"])}
    assert pods == set(_check(router_cfg))
    assert {_agent_check(path, {"POD_NAME": p}) for p in pods} == pods
