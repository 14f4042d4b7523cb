"""``python -m router.sim``: same as ``wa-router sim``."""

from router.sim.main import main

raise SystemExit(main())
