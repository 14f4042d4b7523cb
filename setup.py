"""Build hook: compile the data path with mypyc (``router.build.COMPILED``).

``WA_ROUTER_COMPILE``: ``0`` or unset: pure Python (the README's demo needs no compiler);
``1``: compile, failing loudly; ``auto``: compile where mypyc and a C compiler are at hand,
else pure Python. Metadata lives in pyproject.toml.
"""

from __future__ import annotations

import os
import sys

from setuptools import setup

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from router.build import COMPILED  # noqa: E402

want = os.environ.get("WA_ROUTER_COMPILE", "0")
ext_modules = []
if want in ("1", "auto"):
    try:
        from mypyc.build import mypycify

        ext_modules = mypycify([m.replace(".", "/") + ".py" for m in COMPILED], opt_level="3")
    except Exception as exc:  # mypy missing, or the modules did not compile
        if want == "1":
            raise
        print(f"wa-router: building pure Python ({exc})", file=sys.stderr)
    if want == "auto":
        for ext in ext_modules:
            ext.optional = True  # no C compiler: the .py files run instead

setup(ext_modules=ext_modules)
