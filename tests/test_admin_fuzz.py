"""The admin API against its own OpenAPI document: every route is described, and schemathesis
fuzzes a live router with it (bounded examples, loopback only): no 5xx, answers match."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import aiohttp
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import negative_data_rejection

from router.admin.openapi import spec
from tests.procs import Proc, RouterProc, router_config

if TYPE_CHECKING:
    # The cases an OpenAPI schema generates (schemathesis.Case of an OpenAPI operation).
    from schemathesis.specs.openapi.schemas import OpenApiCase

pytestmark = pytest.mark.system  # real processes (see tests/conftest.py: layers)

TOKEN = "fuzz-t0ken"
SCHEMA = schemathesis.openapi.from_dict(spec())


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterProc]:
    from tests.procs import start_router, start_sim

    tmp = tmp_path_factory.mktemp("admin-fuzz")
    sims = [start_sim(tmp, f"node-{i}") for i in (1, 2)]
    cfg = router_config(sims, "webhooks: {targets: [{url: 'http://127.0.0.1:9/hook'}]}\n").replace(
        "admin: {host: 127.0.0.1, port: {admin_port}}",
        "admin: {host: 127.0.0.1, port: {admin_port}, token: " + TOKEN + "}",
    )
    r = start_router(tmp, cfg)
    try:
        yield r
    finally:
        r.stop()
        for s in sims:
            s.stop()


async def test_every_admin_route_is_described(live: RouterProc, three_sims: list[Proc],
                                              router_factory: Callable[..., RouterProc]) -> None:
    from router.admin.app import create_admin_app
    from router.app import create_app
    from router.config import load_config

    app = create_admin_app(create_app(load_config(live.config_path)).components)
    routes = {(r.method.lower(), r.resource.canonical) for r in app.router.routes() if r.resource}
    described = {(m, p) for p, ops in spec()["paths"].items() for m in ops}
    assert routes - {("head", p) for _, p in routes} == described
    async with aiohttp.ClientSession() as http, http.get(live.admin_url + "/admin/openapi.json") as resp:
        assert resp.status == 200 and (await resp.json())["paths"].keys() == spec()["paths"].keys()


# The same examples on every run (CI stays deterministic); WA_ROUTER_FUZZ_EXAMPLES=200 explores
# further, with fresh randomness.
EXAMPLES = int(os.environ.get("WA_ROUTER_FUZZ_EXAMPLES", "0"))


@SCHEMA.parametrize()
@settings(max_examples=EXAMPLES or 15, deadline=None, derandomize=not EXAMPLES,
          suppress_health_check=list(HealthCheck))
def test_admin_api_fuzzed(case: OpenApiCase, live: RouterProc) -> None:
    case.call_and_validate(
        base_url=live.admin_url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30,
        # Every other check stays (no 5xx, documented status codes, answers matching their
        # schemas, ...). This one is left out: our fixed Authorization header turns its
        # "missing auth" cases into valid ones, and unknown query parameters are ignored, as
        # HTTP APIs do. Bad values of known parameters are still refused with 400 (it found
        # four places that clamped instead; tests/test_admin.py keeps them).
        excluded_checks=[negative_data_rejection],
    )
