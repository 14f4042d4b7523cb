"""The two builds of the data path (issue 20): compiled with mypyc, or pure Python, chosen
at import (``router.build``): ``WA_ROUTER_PURE=1`` and extensions older than their source
both run the ``.py`` files."""

from __future__ import annotations

import importlib.machinery
import os
import subprocess
import sys
from pathlib import Path

import pytest

from router import build

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parent.parent
EXT = importlib.machinery.EXTENSION_SUFFIXES[0]


def test_an_extension_older_than_its_source_is_stale(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg" / "sub"
    pkg.mkdir(parents=True)
    for name in ("fresh", "old", "plain"):
        (pkg / f"{name}.py").write_text("x = 1\n")
    (pkg / f"fresh{EXT}").write_bytes(b"")
    (pkg / f"old{EXT}").write_bytes(b"")
    os.utime(pkg / f"old{EXT}", (1, 1))  # built before the source was last written
    modules = ("pkg.sub.fresh", "pkg.sub.old", "pkg.sub.plain", "pkg.sub.missing")
    assert build.stale(str(tmp_path), modules) == ["pkg.sub.old"]


def _mode(env: dict[str, str]) -> str:
    out = subprocess.run([sys.executable, "-c", "from router import build; print(build.mode())"],
                         cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True,
                         check=True)
    return out.stdout.strip()


def test_pure_on_request_and_compiled_when_built() -> None:
    assert _mode({"WA_ROUTER_PURE": "1"}) == "pure"
    built = all(any((ROOT / (m.replace(".", "/") + s)).exists()
                    for s in importlib.machinery.EXTENSION_SUFFIXES) for m in build.COMPILED)
    assert _mode({"WA_ROUTER_PURE": "0"}) == ("compiled" if built and not build.stale() else "pure")


def test_the_source_finder_leaves_other_packages_alone() -> None:
    finder = build._SourceOnly()
    assert finder.find_spec("json.decoder", None) is None
    assert finder.find_spec("router.nope", [str(ROOT / "router")]) is None
    spec = finder.find_spec("router.stats", [str(ROOT / "router")])
    assert spec is not None and spec.origin is not None and spec.origin.endswith("stats.py")
