"""Fuzzing the config loader (hypothesis): any document either loads or raises ConfigError
listing its problems, never anything else; secrets never show in what check-config prints."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from router.config import ConfigError, check_config, parse_config

KEYS = ["listen", "admin", "store", "instances", "sessions", "health", "passive", "failover",
        "limits", "webhooks", "alerts", "log", "metrics", "placement", "profile", "host", "port",
        "token", "url", "name", "rules", "targets", "retries", "api_keys", "interval", "path",
        "max_body", "workers", "weight", "max_sessions", "json", "header", "query", "bogus"]
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(allow_nan=True),
    st.text(max_size=20), st.sampled_from(["1s", "500ms", "64MiB", "${X}", "${X:-1}", "$${", "(", "http://x:1"]),
)
documents = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.sampled_from(KEYS), inner, max_size=5)),
    max_leaves=30,
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=st.dictionaries(st.sampled_from(KEYS), documents, max_size=6))
def test_any_document_loads_or_lists_its_problems(doc: dict[str, object]) -> None:
    text = yaml.safe_dump(doc)
    try:
        parse_config(text, env={"X": "7"})
    except ConfigError as e:
        assert e.problems and all(isinstance(p, str) and p for p in e.problems)


@settings(max_examples=200, deadline=None)
@given(raw=st.text(max_size=300))
def test_any_text_loads_or_lists_its_problems(raw: str) -> None:
    try:
        parse_config(raw, env={})
    except ConfigError as e:
        assert e.problems


SECRET_CONFIG = """
listen: {api_keys: [client-S3CRET-1]}
admin: {token: admin-S3CRET-2}
store: {url: 'redis://:redis-S3CRET-3@127.0.0.1:6379/0'}
instances: [{name: n1, url: 'http://127.0.0.1:1', api_key: inst-S3CRET-4}]
webhooks: {inbound_hmac_key: hmac-S3CRET-5, targets: [{url: 'http://t/h', hmac_key: tgt-S3CRET-6}]}
alerts: {webhooks: ['https://hooks.example/services/alert-S3CRET-7']}
"""


@pytest.mark.parametrize("broken", ["", "health: {interval: x}\n", "bogus: [client-S3CRET-1]\n"])
def test_check_config_never_prints_a_secret(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                            broken: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(SECRET_CONFIG + broken)
    check_config(str(path))
    out = capsys.readouterr()
    printed = out.out + out.err
    assert printed.strip()
    assert "S3CRET" not in printed.replace("bogus", ""), printed
