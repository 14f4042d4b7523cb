"""MemoryStore on its own: what the contract tests (test_store_contract.py) do not cover."""

from __future__ import annotations

import pytest

from router.store import AssignmentStore, MemoryStore
from router.store.base import Assignment, StaleEpoch


def test_memory_store_is_an_assignment_store() -> None:
    store: AssignmentStore = MemoryStore()
    assert store.healthy and len(store) == 0


async def test_epochs_start_at_one_and_grow_by_one_per_move() -> None:
    store = MemoryStore()
    assert await store.create_if_absent("s", "n1") == Assignment("s", "n1", 1)
    assert await store.move("s", "n2", 1, moving=True) == Assignment("s", "n2", 2, True)
    assert await store.settle("s", 2) == Assignment("s", "n2", 2)
    assert await store.move("s", "n3", None) == Assignment("s", "n3", 3)
    with pytest.raises(StaleEpoch) as stale:
        await store.remove("s", 2)
    assert stale.value.current == Assignment("s", "n3", 3)


async def test_counts_and_lists_follow_moves_settles_and_removals() -> None:
    store = MemoryStore()
    for i in range(4):
        await store.create_if_absent(f"s{i}", "n1")
    await store.move("s0", "n2", 1, moving=True)
    await store.move("s1", "n2", 1)
    assert dict(store.counts()) == {"n1": 2, "n2": 2}
    await store.settle("s0", 2)
    assert dict(store.counts()) == {"n1": 2, "n2": 2}
    assert sorted(a.session for a in await store.list("n2")) == ["s0", "s1"]
    for session in ("s2", "s3"):
        await store.move(session, "n2", None)
    # An instance left with no session has no count at all (as in Redis).
    assert dict(store.counts()) == {"n2": 4} and await store.list("n1") == []
    for i in range(4):
        assert await store.remove(f"s{i}")
    assert dict(store.counts()) == {} and len(store) == 0


async def test_the_only_router_keeps_token_one_while_it_renews() -> None:
    store = MemoryStore()
    assert await store.acquire_leadership("me", 1.0) == 1
    for _ in range(5):
        assert await store.acquire_leadership("me", 1.0) == 1
        assert await store.renew_leadership("me", 1, 1.0)
    assert await store.leader() == "me"
