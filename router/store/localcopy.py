"""The Redis store's local copy of the map: what to keep, whatever order news arrives in.

Pure: no I/O, no event loop. ``RedisStore`` feeds it from three sources that race with
each other:

- bulk reads (``replace``): the whole map, read by HSCAN after every (re)subscription;
- change messages (``apply_message``): what every write PUBLISHed, in the order Redis
  executed the writes, from the subscription on;
- the replies of this process's own commands (``learn`` / ``forget`` with the
  ``generation`` that ``command()`` handed out): each reply reflects Redis when the command
  ran, but is applied later, after other messages or a bulk read may have come in.

The rules that make every interleaving end where Redis is:

- A session's state only moves forward (``Assignment.supersedes``): a higher epoch, or the
  same epoch settled. An older or equal state is ignored, so duplicates and late messages
  change nothing.
- A bulk read replaces the copy and bumps ``generation``: a reply to a command that began
  before it is dropped (the read, or a message after it, has the command's effect).
- While commands are in flight, removals leave a tombstone (session -> removed epoch), so
  a reply read before a removal, or a message older than it, cannot put the session back.
  Tombstones are dropped once no command is in flight: the message stream is ordered, so
  a later message can only carry a newer epoch.

Formats (written by ``router.store.redis_scripts``): a hash value is
``"<instance>:<epoch>"`` or ``"<instance>:<epoch>:m"`` while moving; a change message is
JSON ``{"op": "set"|"del", "s": session, "i": instance, "e": epoch[, "m": true]}``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from collections import Counter
from collections.abc import Callable, Iterator, Mapping

from router.store.base import Assignment, Listener

# One logger for everything the Redis store logs: operators filter on this name.
log = logging.getLogger("router.store.redis")

ChangeCallback = Callable[[Assignment | None, str], None]  # (assignment, session)


def parse_value(session: str, value: str) -> Assignment:
    """A hash value: ``instance:epoch``, or ``instance:epoch:m`` while moving (the instance
    may hold colons: the epoch is after the last one)."""
    moving = value.endswith(":m")
    if moving:
        value = value[:-2]
    instance, _, epoch = value.rpartition(":")
    return Assignment(session, sys.intern(instance), int(epoch), moving)


def add_scanned(fresh: dict[str, Assignment], chunk: Mapping[str, str]) -> None:
    """Add one HSCAN chunk to a bulk read. HSCAN may return a field twice (the hash was
    rehashed meanwhile): keep the later state."""
    for session, value in chunk.items():
        found = parse_value(session, value)
        seen = fresh.get(session)
        if seen is None or found.supersedes(seen):
            fresh[session] = found


class LocalCopy:
    """Session -> ``Assignment`` and sessions per instance, kept by the rules above.

    ``listeners`` hear of every change of the copy; ``on_change`` only of those learned
    from elsewhere (messages and bulk-read differences: ``foreign``), never of the initial
    load. A failing callback is logged and does not stop the others.
    """

    def __init__(self, on_change: ChangeCallback | None = None) -> None:
        self.map: dict[str, Assignment] = {}
        self.counts: dict[str, int] = {}
        self.on_change = on_change
        # Bumped by every bulk read: replies to commands begun before it are dropped.
        self.generation = 0
        self.loads = 0  # bulk reads applied, the initial load included
        self._listeners: dict[Listener, None] = {}  # ordered set
        self._in_flight = 0
        self._tombstones: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self.map)

    def add_listener(self, listener: Listener) -> None:
        self._listeners[listener] = None

    def remove_listener(self, listener: Listener) -> None:
        self._listeners.pop(listener, None)

    @contextlib.contextmanager
    def command(self) -> Iterator[int]:
        """Around one command whose reply may be applied: yields the generation to pass to
        ``learn``, and keeps tombstones while it runs."""
        self._in_flight += 1
        try:
            yield self.generation
        finally:
            self._in_flight -= 1
            if not self._in_flight and self._tombstones:
                self._tombstones.clear()

    def learn(
        self, new: Assignment, *, generation: int | None = None, foreign: bool = False
    ) -> bool:
        """Put ``new`` in the copy unless what is there (or was removed) is as recent, or it
        is a reply from before the last bulk read. True when the copy changed."""
        if generation is not None and generation != self.generation:
            return False
        session = new.session
        current = self.map.get(session)
        if current is not None:
            if not new.supersedes(current):
                return False
            self._uncount(current.instance)
        elif self._tombstones and self._tombstones.get(session, -1) >= new.epoch:
            return False
        self.map[session] = new
        self.counts[new.instance] = self.counts.get(new.instance, 0) + 1
        self._changed(session, new, foreign=foreign)
        return True

    def forget(self, session: str, epoch: int, *, foreign: bool = False) -> bool:
        """``session`` was removed at ``epoch``: drop it if the copy holds that epoch or an
        older one. True when the copy changed."""
        if self._in_flight:
            self._tombstones[session] = max(epoch, self._tombstones.get(session, -1))
        current = self.map.get(session)
        if current is None or current.epoch > epoch:
            return False
        del self.map[session]
        self._uncount(current.instance)
        self._changed(session, None, foreign=foreign)
        return True

    def apply_message(self, data: str) -> bool:
        """Apply one change message; a malformed one is logged and ignored. True when the
        copy changed."""
        try:
            change = json.loads(data)
            session, epoch = str(change["s"]), int(change["e"])
            if change["op"] != "set":
                return self.forget(session, epoch, foreign=True)
            moving = change.get("m") is True
            new = Assignment(session, sys.intern(str(change["i"])), epoch, moving)
        except (ValueError, KeyError, TypeError):
            log.warning("redis store: ignored a malformed change message")
            return False
        return self.learn(new, foreign=True)

    def replace(self, fresh: dict[str, Assignment]) -> None:
        """A bulk read: ``fresh`` becomes the copy (the caller gives it up). After the
        first load, callbacks hear of each difference."""
        old, self.map = self.map, fresh
        self.counts = dict(Counter(a.instance for a in fresh.values()))
        self.generation += 1
        first = self.loads == 0
        self.loads += 1
        if first or (self.on_change is None and not self._listeners):
            return
        for session, assignment in fresh.items():
            if old.get(session) != assignment:
                self._changed(session, assignment, foreign=True)
        for session in old.keys() - fresh.keys():
            self._changed(session, None, foreign=True)

    def _uncount(self, instance: str) -> None:
        left = self.counts[instance] - 1
        if left:
            self.counts[instance] = left
        else:
            del self.counts[instance]

    def _changed(self, session: str, assignment: Assignment | None, *, foreign: bool) -> None:
        for listener in tuple(self._listeners):
            try:
                listener(session, assignment)
            except Exception:  # a bug in a callback must not stop the listener task
                log.exception("redis store: listener failed")
        callback = self.on_change
        if foreign and callback is not None:
            try:
                callback(assignment, session)
            except Exception:
                log.exception("redis store: on_change callback failed")
