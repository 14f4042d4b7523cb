"""Session placement: consistent hashing with bounded loads. Pure, no I/O.

A :class:`Ring` is built once per membership change. :meth:`Ring.place` picks the instance for
a session seen for the first time; after that the assignment map is the source of truth and
nothing here is asked again about that session. :func:`plan_rebalance` lists the fewest moves
that bring every instance back within its cap.

The rule is Mirrokni, Thorup and Zadimoghaddam's (2016), as in HAProxy's
``hash-balance-factor`` and Envoy's ``hash_balance_factor``: with ``n`` sessions on the
eligible members (counting the one being placed) and ``W`` their total weight, member ``i``
holds at most ``ceil(balance_factor * n * w_i / W)`` sessions, and never more than its
``max_sessions``. A key goes to the first member with room in the key's ring order.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Callable, Container, Iterable, Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from hashlib import blake2b
from itertools import repeat
from types import MappingProxyType

__all__ = ["Member", "Ring", "capacity", "plan_rebalance", "stable_hash"]

_MASK64 = (1 << 64) - 1
# ceil() of a product of floats: 1.1 * 10 is 11.000000000000002 in binary, and a cap of 12
# where an operator computes 11 would break the documented bound. Shrinking by far more
# than the rounding error (a few ulps) and far less than any real fractional part (at least
# ~1e-6 for decimal balance factors and sane weights) gives the ceiling of the exact value.
_SHRINK = 1.0 - 1e-12
# Cached eligible-set summaries kept per ring; eligible sets change only on health events.
_CACHE_MAX = 32


def stable_hash(text: str) -> int:
    """64-bit hash of ``text``, the same in every process and Python version.

    Python's ``hash()`` is salted per process (PYTHONHASHSEED), so routers would disagree.
    """
    data = text.encode("utf-8", "surrogatepass")
    return int.from_bytes(blake2b(data, digest_size=8).digest(), "big")


@dataclass(frozen=True, slots=True)
class Member:
    """One placement target (an instance): its share of sessions and its hard limit."""

    name: str
    weight: float = 1.0
    max_sessions: int | None = None

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("member name must not be empty")
        if not (math.isfinite(self.weight) and self.weight > 0):
            raise ValueError(f"member {self.name!r}: weight must be a positive number")
        if self.max_sessions is not None and self.max_sessions < 0:
            raise ValueError(f"member {self.name!r}: max_sessions must be >= 0")


def _check_balance_factor(balance_factor: float) -> None:
    # Below 1 the caps sum to less than the load: some sessions would have nowhere to go.
    if not (math.isfinite(balance_factor) and balance_factor >= 1.0):
        raise ValueError(f"balance_factor must be a finite number >= 1, got {balance_factor!r}")


def _cap(scale: float, weight: float, max_sessions: int | None) -> int:
    """``min(max_sessions, ceil(scale * weight))`` where ``scale = bf * n / W``."""
    cap = math.ceil(scale * weight * _SHRINK)
    if max_sessions is not None and max_sessions < cap:
        return max_sessions
    return cap


def capacity(member: Member, total_load: int, total_weight: float, balance_factor: float) -> int:
    """Most sessions ``member`` may hold under the bounded-loads rule.

    ``total_load`` counts every session on the eligible members, including one about to be
    placed; ``total_weight`` is the eligible members' total weight.
    """
    _check_balance_factor(balance_factor)
    if total_weight <= 0:
        return 0
    return _cap(balance_factor * total_load / total_weight, member.weight, member.max_sessions)


class Ring:
    """Consistent-hash ring built once per membership change (not per placement).

    Each member gets ``round(points_per_weight * weight)`` points (at least one) hashed from
    ``"{name}#{i}"``, so a member's points depend on its own name and weight only: adding or
    removing a member changes no other member's points. The ring, and so every placement,
    does not depend on the order of ``members``. Instances are immutable after construction
    (but for a small cache) and safe to share.
    """

    __slots__ = (
        "_budget",
        "_cache",
        "_hashes",
        "_index",
        "_maxes",
        "_members",
        "_names",
        "_own",
        "_owners",
        "_weights",
    )

    def __init__(self, members: Sequence[Member], points_per_weight: int = 160) -> None:
        if points_per_weight < 1:
            raise ValueError("points_per_weight must be >= 1")
        by_name: dict[str, Member] = {}
        for m in members:
            if m.name in by_name:
                raise ValueError(f"duplicate member name {m.name!r}")
            by_name[m.name] = m
        self._members: Mapping[str, Member] = MappingProxyType(by_name)
        # Member indices follow name order, so ties (equal point hashes) break by name
        # whatever order the config lists the instances in.
        ordered = sorted(by_name.values(), key=lambda m: m.name)
        self._names: tuple[str, ...] = tuple(m.name for m in ordered)
        self._weights: tuple[float, ...] = tuple(m.weight for m in ordered)
        self._maxes: tuple[int | None, ...] = tuple(m.max_sessions for m in ordered)
        self._index: dict[str, int] = {name: j for j, name in enumerate(self._names)}
        points: list[tuple[int, int]] = []
        own: list[list[int]] = []
        for j, m in enumerate(ordered):
            count = max(1, round(points_per_weight * m.weight))
            mine = sorted(stable_hash(f"{m.name}#{i}") for i in range(count))
            own.append(mine)
            points.extend((h, j) for h in mine)
        points.sort()
        self._hashes: list[int] = [h for h, _ in points]
        self._owners: list[int] = [j for _, j in points]
        # Each member's own sorted points: its first point clockwise from any hash is one
        # bisection away, which bounds a full preference walk by O(members), not O(points).
        self._own: tuple[list[int], ...] = tuple(own)
        # Ring steps to walk before ordering the remaining members by bisection instead:
        # stepping is cheaper per point, but finding the last few unseen members by stepping
        # takes ~members * ln(members) points (coupon collector).
        self._budget = 2 * len(ordered) + 8
        self._cache: dict[frozenset[str], tuple[float, tuple[str, ...]]] = {}

    @property
    def members(self) -> Mapping[str, Member]:
        """The members by name (read-only)."""
        return self._members

    def __len__(self) -> int:
        return len(self._names)

    def __repr__(self) -> str:
        return f"Ring({len(self._names)} members, {len(self._hashes)} points)"

    # -- lookups ---------------------------------------------------------------------------

    def preference(self, key: str) -> Iterator[str]:
        """Distinct member names in ring order from ``key``'s hash; the first is its home."""
        if not self._hashes:
            return iter(())
        names = self._names
        return (names[j] for j in self._walk(stable_hash(key)))

    def place(
        self,
        key: str,
        loads: Mapping[str, int],
        eligible: Container[str],
        balance_factor: float,
        *,
        total_load: int | None = None,
    ) -> str | None:
        """The member a new session ``key`` goes to, or None when no eligible member has room.

        ``loads`` maps member names to their current session counts (missing means 0);
        ``eligible`` holds the members that may take new sessions (healthy, not draining).
        Loads of non-eligible members do not count. A caller that keeps the eligible members'
        total load can pass it as ``total_load`` and skip an O(members) sum. With a set (best a
        frozenset kept until eligibility changes) the eligible weight is cached; any other
        container costs an O(members) scan per call.
        """
        _check_balance_factor(balance_factor)
        if not self._hashes:
            return None
        weight, names_in = self._eligible(eligible)
        if weight <= 0:
            return None
        if total_load is None:
            total_load = sum(map(loads.get, names_in, repeat(0)))
        scale = balance_factor * (total_load + 1) / weight
        h = stable_hash(key)
        hashes = self._hashes
        i = bisect_left(hashes, h)
        if i == len(hashes):
            i = 0
        # Common case: the key's home member has room. No generator, no set.
        j = self._owners[i]
        name = self._names[j]
        if name in eligible and loads.get(name, 0) < _cap(scale, self._weights[j], self._maxes[j]):
            return name

        def fits(k: int) -> bool:
            n = self._names[k]
            return n in eligible and loads.get(n, 0) < _cap(scale, self._weights[k], self._maxes[k])

        found = self._first(h, fits, start=i, skip=j)
        return None if found is None else self._names[found]

    # -- internals -------------------------------------------------------------------------

    def _eligible(self, eligible: Container[str]) -> tuple[float, tuple[str, ...]]:
        """Total weight and names of the ring members in ``eligible``."""
        key: frozenset[str] | None = None
        if isinstance(eligible, AbstractSet):
            # Cached by value: a set rebuilt per call still hits (freezing it is C-speed,
            # ~5x cheaper than the Python loop below); a frozenset hashes once per object.
            key = eligible if isinstance(eligible, frozenset) else frozenset(eligible)
            hit = self._cache.get(key)
            if hit is not None:
                return hit
        names = tuple(n for n in self._names if n in eligible)
        index = self._index
        result = (math.fsum(self._weights[index[n]] for n in names), names)
        if key is not None:
            if len(self._cache) >= _CACHE_MAX:
                self._cache.clear()
            self._cache[key] = result
        return result

    def _walk(self, h: int, start: int | None = None) -> Iterator[int]:
        """Distinct member indices in clockwise order from hash ``h``.

        Steps along the ring for a bounded number of points (cheap, and enough for the few
        candidates a placement usually needs), then orders the members not yet seen by the
        distance to their own first point after ``h``: the same order, in O(members log
        points-per-member) however unlucky the walk.
        """
        hashes, owners = self._hashes, self._owners
        n = len(hashes)
        total = len(self._names)
        i = bisect_left(hashes, h) if start is None else start
        if i == n:
            i = 0
        seen: set[int] = set()
        for _ in range(min(n, self._budget)):
            j = owners[i]
            i += 1
            if i == n:
                i = 0
            if j not in seen:
                seen.add(j)
                yield j
                if len(seen) == total:
                    return
        # Equal distances (equal point hashes) order by index, i.e. by name, as the ring does.
        rest = sorted((self._distance(j, h), j) for j in range(total) if j not in seen)
        for _, j in rest:
            yield j

    def _distance(self, j: int, h: int) -> int:
        """Clockwise distance from ``h`` to member ``j``'s first point at or after it."""
        mine = self._own[j]
        k = bisect_left(mine, h)
        point = mine[k] if k < len(mine) else mine[0]
        return (point - h) & _MASK64

    def _first(
        self, h: int, fits: Callable[[int], bool], start: int | None = None, skip: int = -1
    ) -> int | None:
        """The first member index in ``h``'s order that ``fits`` (``skip`` is known not to)."""
        for j in self._walk(h, start):
            if j != skip and fits(j):
                return j
        return None

    def _rank(self, h: int, target: int) -> int:
        """Position of member ``target`` in the preference order of hash ``h`` (0 = home)."""
        for rank, j in enumerate(self._walk(h)):
            if j == target:
                return rank
        return len(self._names)


def plan_rebalance(
    assignments: Mapping[str, str] | Iterable[tuple[str, str]],
    ring: Ring,
    eligible: Container[str],
    balance_factor: float,
    pinned: Container[str] = (),
) -> list[tuple[str, str, str]]:
    """The fewest ``(session, from, to)`` moves that bring every eligible member within its cap.

    Caps are those of :func:`capacity` over the sessions held by eligible ring members (a move
    keeps that total, so the caps stay put while planning). Only overloaded members give up
    sessions, exactly their excess: the ones whose ring order ranks that member lowest
    (placed there by overflow, not by hash) first, ties broken by the session's hash.
    Each goes where :meth:`Ring.place` would send it. Sessions on non-eligible or unknown
    members are left alone (draining is a separate operation). When ``max_sessions`` leaves
    no room anywhere, the plan stops short; the result does not depend on input order.
    ``pinned`` sessions (e.g. moving right now) count toward their member's load but are
    never chosen to move.
    """
    _check_balance_factor(balance_factor)
    current = dict(assignments)
    index = ring._index
    members = [j for j, name in enumerate(ring._names) if name in eligible]
    if not members:
        return []
    loads: dict[int, int] = dict.fromkeys(members, 0)
    held: dict[int, list[str]] = {j: [] for j in members}
    for session, name in current.items():
        j = index.get(name)
        if j is not None and j in loads:
            loads[j] += 1
            held[j].append(session)
    total = sum(loads.values())
    weight = math.fsum(ring._weights[j] for j in members)
    scale = balance_factor * total / weight
    caps = {j: _cap(scale, ring._weights[j], ring._maxes[j]) for j in members}

    def has_room(k: int) -> bool:
        return k in loads and loads[k] < caps[k]

    moves: list[tuple[str, str, str]] = []
    for j in members:  # name order
        excess = loads[j] - caps[j]
        if excess <= 0:
            continue
        hashed = [(stable_hash(s), s) for s in held[j] if s not in pinned]
        hashed.sort(key=lambda hs: (-ring._rank(hs[0], j), hs[0], hs[1]))
        for h, session in hashed[:excess]:
            dest = ring._first(h, has_room, skip=j)
            if dest is None:
                # Room is the same for every key: nothing else can move either.
                return moves
            loads[j] -= 1
            loads[dest] += 1
            moves.append((session, ring._names[j], ring._names[dest]))
    return moves
