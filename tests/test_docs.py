"""SECURITY.md names a test for every promise: each one must exist."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_test_named_in_security_md_exists() -> None:
    text = (ROOT / "SECURITY.md").read_text()
    named = re.findall(r"`(tests/[\w/]+\.py)(?:::(\w+))?`", text)
    assert len(named) >= 25
    current = ""
    for path, name in named:
        src = (ROOT / path).read_text()
        current = path
        if name:
            assert f"def {name}(" in src, f"SECURITY.md names {path}::{name}, which does not exist"
    for name in re.findall(r"`::(\w+)`", text):  # continuation of the previous file
        assert any(f"def {name}(" in p.read_text() for p in (ROOT / "tests").glob("test_*.py")), name
    assert current
