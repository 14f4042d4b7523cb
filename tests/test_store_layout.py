"""The store's parts without Redis: import direction, reprs, where a URL points."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import router
from router.redis_url import store_url_problem, url_location
from router.store import MemoryStore
from router.store.redis import RedisStore

pytestmark = pytest.mark.unit

ROUTER = Path(router.__file__).parent


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_config_does_not_import_the_store() -> None:
    for path in sorted((ROUTER / "config").glob("*.py")):
        assert not any(m.startswith("router.store") for m in imported_modules(path)), path


def test_the_local_copy_does_no_io() -> None:
    names = imported_modules(ROUTER / "store" / "localcopy.py")
    assert not any(m.split(".")[0] in {"asyncio", "redis", "socket"} for m in names), names


@pytest.mark.parametrize(
    ("url", "location"),
    [
        ("redis://:s3cret@cache:6379/0", "redis://cache:6379/0"),
        ("rediss://user:s3cret@[::1]:6380/2?password=s3cret", "rediss://[::1]:6380/2"),
        ("redis://localhost", "redis://localhost"),
        ("unix:///run/redis.sock?password=s3cret", "unix:///run/redis.sock"),
        ("redis+sentinel://u:s3cret@h1,[::1]:5000/svc/3?sentinel_password=s3cret",
         "redis+sentinel://h1:26379,[::1]:5000/svc/3"),
        ("redis+sentinel://u:s3cret@h1", "redis+sentinel://?"),
        ("redis://:s3cret@cache:99999/0", "?"),
    ],
)
def test_url_location_never_shows_credentials(url: str, location: str) -> None:
    assert url_location(url) == location
    assert "s3cret" not in repr(RedisStore(url))


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("redis://h:6379/0", None),
        ("unix:///tmp/r.sock", None),
        ("redis+sentinel://h1/svc", None),
        ("http://h", "must be a redis://, rediss:// or unix:// URL"),
        ("redis+sentinel://:s3cret@h1", "redis+sentinel:// URL needs a service name: .../service_name[/db]"),
    ],
)
def test_store_url_problems_never_quote_the_url(url: str, problem: str | None) -> None:
    assert store_url_problem(url) == problem


def test_redis_store_repr_says_where_and_what_it_holds() -> None:
    store = RedisStore("redis://:s3cret@cache:6379/0", "wr:")
    assert repr(store) == "<RedisStore redis://cache:6379/0 prefix='wr:' sessions=0 not connected resyncs=0>"


async def test_memory_store_repr() -> None:
    store = MemoryStore()
    await store.create_if_absent("s1", "n1")
    await store.create_if_absent("s2", "n2")
    await store.set_drained("n2", True)
    assert await store.acquire_leadership("me", 10.0) == 1
    assert repr(store) == "<MemoryStore sessions=2 instances=2 leader='me' drained=['n2']>"
