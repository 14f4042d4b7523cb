"""How this copy of wa-router runs: the hot modules compiled with mypyc, or pure Python.

``setup.py`` compiles ``COMPILED`` when asked (``WA_ROUTER_COMPILE=1``, what the test
command, the benchmarks and the image do; ``auto`` tries and falls back on failure); the
modules' ``.py`` files stay beside the extensions, so a machine without a C compiler runs
the same code as Python. ``WA_ROUTER_PURE=1`` makes the interpreter ignore the extensions
(this module's ``use_source``, installed by ``router/__init__.py`` before anything else of
the package is imported): the test command runs a fast layer that way so neither build rots.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from collections.abc import Sequence
from types import ModuleType

# The data path: client connections and exchanges, HTTP framing, the upstream pool, request
# accounting, routing and session extraction (issue 20).
COMPILED: tuple[str, ...] = (
    "router.proxy.connection",
    "router.proxy.exchange",
    "router.proxy.framing",
    "router.proxy.flow",
    "router.proxy.headers",
    "router.transport.upstream",
    "router.stats",
    "router.instances",
    "router.routing",
    "router.sessions.common",
    "router.sessions.extractor",
    "router.sessions.waha",
    "router.sessions.evolution",
)


class _SourceOnly(importlib.abc.MetaPathFinder):
    """Finds ``router.*`` modules as ``.py`` source only, never as extension modules."""

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if not fullname.startswith("router.") or path is None:
            return None
        loaders = [(importlib.machinery.SourceFileLoader, importlib.machinery.SOURCE_SUFFIXES)]
        for entry in path:
            spec = importlib.machinery.FileFinder(entry, *loaders).find_spec(fullname)
            if spec is not None:
                return spec
        return None


def use_source() -> None:
    """From now on, import the package's modules from their Python source."""
    if not any(isinstance(f, _SourceOnly) for f in sys.meta_path):
        sys.meta_path.insert(0, _SourceOnly())


def stale(root: str | None = None, modules: Sequence[str] = COMPILED) -> list[str]:
    """Compiled modules older than their source (edited or checked out since the build):
    their extensions must not run, or the edit would be silently ignored. Looks at files
    only (nothing is imported); ``root``: the directory holding the package."""
    import os

    root = root or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = []
    for name in modules:
        base = os.path.join(root, *name.split("."))
        source = base + ".py"
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            ext = base + suffix
            if os.path.exists(ext):
                if os.path.exists(source) and os.path.getmtime(source) > os.path.getmtime(ext):
                    out.append(name)
                break
    return out


def mode() -> str:
    """``compiled`` when the data path runs as mypyc extensions, else ``pure``."""
    import router.proxy.exchange as hot

    origin = getattr(hot, "__file__", "") or ""
    return "compiled" if origin.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES)) else "pure"
