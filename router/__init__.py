"""wa-router: one endpoint in front of a fleet of WhatsApp API instances."""

import os as _os

__version__ = "0.1.0"


def _choose_build() -> None:
    """Run the Python source instead of the compiled data path (``router.build``) when asked
    (``WA_ROUTER_PURE=1``) or when an extension is older than its source."""
    from router import build

    if _os.environ.get("WA_ROUTER_PURE") == "1":
        build.use_source()
    elif stale := build.stale():
        import logging

        build.use_source()
        logging.getLogger("wa_router").warning(
            "compiled modules older than their source (%s): running pure Python; "
            "rebuild with: WA_ROUTER_COMPILE=1 python setup.py build_ext --inplace",
            ", ".join(stale))


_choose_build()
