from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.flavors import WAHA, Flavor
from tests.procs import Proc, RouterProc, start_router, start_sim
from tests.redis_server import RedisServer

# Test layers, each runnable alone (`pytest -m unit`, `-m component`, `-m system`):
#   unit       pure code: no event loop or an in-process one, no sockets to other processes
#   component  the app built by create_app with fakes and a manual clock
#   system     real processes: routers, sims, redis-server, chromium, podman
# A test asking for a process fixture is `system`; a module or test may say its layer with a
# marker; everything else is `unit`.
LAYERS = ("unit", "component", "system")
PROCESS_FIXTURES = frozenset({"sim_factory", "three_sims", "router_factory", "redis_server"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if any(item.get_closest_marker(layer) for layer in LAYERS):
            continue
        fixtures = set(getattr(item, "fixturenames", ()))
        item.add_marker(pytest.mark.system if fixtures & PROCESS_FIXTURES else pytest.mark.unit)


@pytest.fixture
def sim_factory(tmp_path: Path) -> Iterator[Callable[..., Proc]]:
    started: list[Proc] = []

    def make(name: str, *extra: str, port: int | None = None, flavor: Flavor = WAHA) -> Proc:
        p = start_sim(tmp_path, name, port, *extra, flavor=flavor)
        started.append(p)
        return p

    yield make
    for p in started:
        p.stop()


@pytest.fixture
def three_sims(sim_factory: Callable[..., Proc]) -> list[Proc]:
    return [sim_factory(f"node-{i}") for i in (1, 2, 3)]


@pytest.fixture
def router_factory(tmp_path: Path) -> Iterator[Callable[..., RouterProc]]:
    started: list[RouterProc] = []

    def make(config_yaml: str, **kw: object) -> RouterProc:
        r = start_router(tmp_path, config_yaml, **kw)  # type: ignore[arg-type]
        started.append(r)
        return r

    yield make
    for r in started:
        r.stop()


# -- Redis (appended for the multi-router tests) ----------------------------------------------


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A real ``redis-server`` (appendonly) on a free loopback port, in its own directory;
    ``kill()`` / ``start()`` restart it on the same port and directory."""
    s = RedisServer(tmp_path).start()
    yield s
    s.kill()
