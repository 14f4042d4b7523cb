"""Behaviour both assignment stores share: the same tests against MemoryStore and against
RedisStore (a real redis-server per test). What needs two processes is in
test_store_redis.py; what only the memory store does is in test_store_memory.py."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from router.store.base import Assignment, AssignmentStore, StaleEpoch
from router.store.memory import MemoryStore
from router.store.redis import RedisStore
from tests.redis_server import RedisServer

pytestmark = pytest.mark.system  # real processes (see tests/conftest.py: layers)


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[AssignmentStore]:
    if request.param == "memory":
        yield MemoryStore()
        return
    server = RedisServer(tmp_path).start()
    redis_store = RedisStore(server.url, "contract:")
    try:
        await redis_store.start()
        yield redis_store
    finally:
        await redis_store.close()
        server.kill()


class Heard:
    """A listener that records ``(session, assignment, what cached() said meanwhile)``."""

    def __init__(self, store: AssignmentStore) -> None:
        self.store = store
        self.calls: list[tuple[str, Assignment | None]] = []
        self.cached_during: list[Assignment | None] = []

    def __call__(self, session: str, assignment: Assignment | None) -> None:
        self.calls.append((session, assignment))
        self.cached_during.append(self.store.cached(session))


# -- the moving flag --------------------------------------------------------------------------


async def test_move_sets_moving_and_settle_clears_it_at_the_same_epoch(
    store: AssignmentStore,
) -> None:
    placed = await store.create_if_absent("s", "n1")
    assert placed.moving is False
    moved = await store.move("s", "n2", placed.epoch, moving=True)
    assert (moved.instance, moved.moving) == ("n2", True) and moved.epoch > placed.epoch
    assert store.cached("s") == moved and await store.get("s") == moved
    assert dict(store.counts()) == {"n2": 1}

    settled = await store.settle("s", moved.epoch)
    assert settled == Assignment("s", "n2", moved.epoch, moving=False)  # the epoch is kept
    assert store.cached("s") == settled and await store.get("s") == settled
    assert dict(store.counts()) == {"n2": 1} and len(store) == 1
    assert await store.settle("s", moved.epoch) == settled  # idempotent
    assert store.cached("s") == settled


async def test_settle_with_a_stale_epoch_or_an_unknown_session_is_a_no_op(
    store: AssignmentStore,
) -> None:
    placed = await store.create_if_absent("s", "n1")
    first = await store.move("s", "n2", placed.epoch, moving=True)
    second = await store.move("s", "n3", first.epoch, moving=True)  # moved again meanwhile
    assert await store.settle("s", first.epoch) is None  # never raises StaleEpoch
    assert store.cached("s") == second and second.moving
    assert await store.settle("nobody", 1) is None
    assert await store.remove("s", second.epoch)
    assert await store.settle("s", second.epoch) is None
    assert store.cached("s") is None


async def test_a_plain_move_is_not_moving_and_a_moving_session_can_move_or_go(
    store: AssignmentStore,
) -> None:
    placed = await store.create_if_absent("s", "n1")
    moving = await store.move("s", "n2", placed.epoch, moving=True)
    plain = await store.move("s", "n3", moving.epoch)  # default: moving=False
    assert plain.moving is False and plain.epoch > moving.epoch
    with pytest.raises(StaleEpoch) as stale:
        await store.move("s", "n1", moving.epoch, moving=True)
    assert stale.value.current == plain
    again = await store.move("s", "n1", None, moving=True)
    assert again.moving and (await store.list("n1")) == [again]
    assert await store.remove("s", again.epoch) is True
    assert len(store) == 0 and dict(store.counts()) == {}
    created = await store.move("fresh", "n2", None, moving=True)  # a move may create
    assert created.moving and store.cached("fresh") == created


# -- listeners --------------------------------------------------------------------------------


async def test_listeners_hear_every_own_write_after_the_copy_changed(
    store: AssignmentStore,
) -> None:
    heard = Heard(store)
    store.add_listener(heard)
    store.add_listener(heard)  # once only
    placed = await store.create_if_absent("s", "n1")
    assert await store.create_if_absent("s", "n9") == placed  # no change: nothing heard
    moved = await store.move("s", "n2", placed.epoch, moving=True)
    with pytest.raises(StaleEpoch):
        await store.move("s", "n3", placed.epoch)  # refused: nothing changed
    assert await store.settle("s", placed.epoch) is None  # stale: nothing heard
    settled = await store.settle("s", moved.epoch)
    assert await store.settle("s", moved.epoch) == settled  # already settled: nothing heard
    assert await store.remove("s")
    assert heard.calls == [("s", placed), ("s", moved), ("s", settled), ("s", None)]
    # Each listener ran after the copy changed: cached() already gave the new value.
    assert heard.cached_during == [a for _, a in heard.calls]

    store.remove_listener(heard)
    store.remove_listener(heard)  # no error
    await store.create_if_absent("t", "n1")
    assert len(heard.calls) == 4


async def test_a_failing_listener_neither_breaks_the_write_nor_silences_the_others(
    store: AssignmentStore, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(session: str, assignment: Assignment | None) -> None:
        raise RuntimeError("listener bug")

    heard = Heard(store)
    store.add_listener(broken)
    store.add_listener(heard)
    placed = await store.create_if_absent("s", "n1")
    assert store.cached("s") == placed and heard.calls == [("s", placed)]
    assert any("listener failed" in r.getMessage() for r in caplog.records)


# -- leadership -------------------------------------------------------------------------------


async def test_one_holder_at_a_time_with_a_stable_token(store: AssignmentStore) -> None:
    assert await store.leader() is None
    token = await store.acquire_leadership("router-a", 5.0)
    assert token is not None
    assert await store.acquire_leadership("router-a", 5.0) == token  # kept: same token
    assert await store.acquire_leadership("router-b", 5.0) is None
    assert await store.leader() == "router-a"

    assert await store.renew_leadership("router-a", token, 5.0) is True
    assert await store.renew_leadership("router-b", token, 5.0) is False
    assert await store.renew_leadership("router-a", token + 1, 5.0) is False
    await store.release_leadership("router-b", token)  # not the holder: nothing happens
    await store.release_leadership("router-a", token + 1)  # wrong token: nothing happens
    assert await store.leader() == "router-a"

    await store.release_leadership("router-a", token)
    assert await store.leader() is None
    assert await store.renew_leadership("router-a", token, 5.0) is False
    taken = await store.acquire_leadership("router-b", 5.0)  # at once after a release
    assert taken is not None and taken > token
    assert await store.leader() == "router-b"
    retaken = await store.acquire_leadership("router-a", 5.0)
    assert retaken is None


async def test_an_expired_lease_goes_to_the_next_candidate_with_a_higher_token(
    store: AssignmentStore,
) -> None:
    ttl = 0.3
    token = await store.acquire_leadership("router-a", ttl)
    assert token is not None
    start = time.monotonic()
    # router-a stops renewing; router-b polls, as a standby would.
    taken: int | None = None
    while taken is None:
        assert time.monotonic() - start < 3 * ttl, "the lease did not expire"
        taken = await store.acquire_leadership("router-b", ttl)
        if taken is None:
            await asyncio.sleep(0.02)
    waited = time.monotonic() - start
    assert ttl * 0.8 <= waited < 2 * ttl, waited
    assert taken > token
    assert await store.leader() == "router-b"
    assert await store.renew_leadership("router-a", token, ttl) is False  # lost for good
    # Same holder re-taking after expiry is a takeover too: a new token.
    await store.release_leadership("router-b", taken)
    again = await store.acquire_leadership("router-b", ttl)
    assert again is not None and again > taken


async def test_renewing_keeps_the_lease_past_its_first_ttl(store: AssignmentStore) -> None:
    ttl = 0.2
    token = await store.acquire_leadership("router-a", ttl)
    assert token is not None
    deadline = time.monotonic() + 3 * ttl
    while time.monotonic() < deadline:  # renew every ttl/4 for three TTLs
        assert await store.renew_leadership("router-a", token, ttl) is True
        assert await store.acquire_leadership("router-b", ttl) is None
        await asyncio.sleep(ttl / 4)
    assert await store.leader() == "router-a"


async def test_a_lease_needs_a_positive_ttl(store: AssignmentStore) -> None:
    for ttl in (0.0, -1.0):
        with pytest.raises(ValueError):
            await store.acquire_leadership("router-a", ttl)
        with pytest.raises(ValueError):
            await store.renew_leadership("router-a", 1, ttl)
