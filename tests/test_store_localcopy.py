"""The Redis store's local copy (router.store.localcopy), pure, against a model of Redis.

``ModelRedis`` does what the Lua scripts do (router.store.redis_scripts) and publishes the
same messages; a hypothesis state machine interleaves, in any order: writes by other
routers, this router's own commands (begun, run in Redis, reply applied, or failed),
message deliveries (also twice), lost subscriptions, and bulk reads that visit the hash
session by session (HSCAN is not a snapshot) while everything else goes on. It checks what
the copy guarantees at every step, and that once everything has arrived the copy is what
Redis holds."""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from router.store.base import Assignment
from router.store.localcopy import LocalCopy, add_scanned, parse_value

pytestmark = pytest.mark.unit

SESSIONS = ("a", "b")  # few, so that writes collide
INSTANCES = ("n1", "n2", "x:y")  # an instance name may hold colons
# The same examples on every run (CI stays deterministic); WA_ROUTER_FUZZ_EXAMPLES=2000
# explores further, with fresh randomness.
EXAMPLES = int(os.environ.get("WA_ROUTER_FUZZ_EXAMPLES", "0"))


def value_of(a: Assignment) -> str:
    return f"{a.instance}:{a.epoch}" + (":m" if a.moving else "")


class ModelRedis:
    """The assignments hash, the epoch counter and the changes channel, written the way
    the Lua scripts write them. Replies are the scripts' replies."""

    def __init__(self) -> None:
        self.hash: dict[str, str] = {}
        self.epoch = 0
        self.subscribers: list[list[str]] = []  # inboxes of the live subscriptions

    def assignments(self) -> dict[str, Assignment]:
        return {s: parse_value(s, v) for s, v in self.hash.items()}

    def _publish(self, change: dict[str, object]) -> None:
        for inbox in self.subscribers:
            inbox.append(json.dumps(change))

    def _set(self, session: str, a: Assignment) -> list[object]:
        self.hash[session] = value_of(a)
        change: dict[str, object] = {"op": "set", "s": session, "i": a.instance, "e": a.epoch}
        if a.moving:
            change["m"] = True
        self._publish(change)
        return [1, self.hash[session]]

    def _next_epoch(self, floor: int) -> int:
        self.epoch = max(self.epoch + 1, floor + 1)
        return self.epoch

    def create(self, session: str, instance: str) -> list[object]:
        if session in self.hash:
            return [0, self.hash[session]]
        return self._set(session, Assignment(session, instance, self._next_epoch(0)))

    def move(self, session: str, instance: str, expected: int | None, moving: bool) -> list[object]:
        cur = self.hash.get(session)
        epoch = parse_value(session, cur).epoch if cur else 0
        if expected is not None and (cur is None or epoch != expected):
            return [0] if cur is None else [0, cur]
        return self._set(session, Assignment(session, instance, self._next_epoch(epoch), moving))

    def settle(self, session: str, epoch: int) -> list[object]:
        cur = self.hash.get(session)
        if cur is None:
            return [0]
        a = parse_value(session, cur)
        if a.epoch != epoch:
            return [0, cur]
        if not a.moving:
            return [1, cur]
        return self._set(session, Assignment(session, a.instance, epoch))

    def remove(self, session: str, expected: int | None) -> list[object]:
        cur = self.hash.get(session)
        if cur is None:
            return [0]
        a = parse_value(session, cur)
        if expected is not None and a.epoch != expected:
            return [-1, cur]
        del self.hash[session]
        self._publish({"op": "del", "s": session, "i": a.instance, "e": a.epoch})
        return [1, cur]

    def run(self, op: Op) -> list[object]:
        if op.kind == "create":
            return self.create(op.session, op.instance)
        if op.kind == "move":
            return self.move(op.session, op.instance, op.expected, op.moving)
        if op.kind == "settle":
            return self.settle(op.session, op.expected or 0)
        if op.kind == "remove":
            return self.remove(op.session, op.expected)
        cur = self.hash.get(op.session)  # get: HGET
        return [1, cur] if cur else [0]


@dataclass
class Op:
    kind: str  # create, move, settle, remove, get
    session: str
    instance: str = "n1"
    expected: int | None = None  # the epoch for move / remove (CAS) and settle
    moving: bool = False


@dataclass
class Command:
    """One of this router's commands, between ``copy.command()`` and its end."""

    op: Op
    context: AbstractContextManager[int]
    generation: int
    reply: list[object] | None = None


@dataclass
class Heard:
    """What the callbacks were told, checked as they are told it."""

    copy: LocalCopy
    view: dict[str, Assignment] = field(default_factory=dict)  # rebuilt from listener calls
    foreign: bool = False  # the harness is applying a message or a bulk read
    bulk: bool = False  # ... a bulk read, which may go back (see the monotonic check)
    tombstones: dict[str, int] = field(default_factory=dict)  # removals while commands run
    on_change_calls: int = 0
    listener_calls: int = 0
    # The copy catches what a callback raises (a bug there must not stop the sync loop),
    # so the checks below write here and an invariant reads it.
    problems: list[str] = field(default_factory=list)

    def check(self, ok: bool, problem: str) -> None:
        if not ok:
            self.problems.append(problem)

    def listener(self, session: str, assignment: Assignment | None) -> None:
        self.listener_calls += 1
        before = self.view.get(session)
        self.check(assignment != before, f"told of a change the copy had: {assignment}")
        self.check(self.copy.map.get(session) == assignment, "cached() lags the listener")
        if assignment is None:
            del self.view[session]
            return
        self.view[session] = assignment
        if self.bulk:
            return
        # Between bulk reads a session only moves forward: a higher epoch, or settled at
        # the same one, never back to moving.
        if before is not None:
            self.check(assignment.supersedes(before), f"went back: {before} -> {assignment}")
        # ...and while commands are in flight, one removed at epoch E never comes back at E
        # or below (a stale reply or message loses to the tombstone).
        tombstone = self.tombstones.get(session, -1)
        self.check(assignment.epoch > tombstone, f"{assignment} back over removal at {tombstone}")

    def on_change(self, assignment: Assignment | None, session: str) -> None:
        self.check(self.foreign, f"on_change heard of an own write: {session} {assignment}")
        self.on_change_calls += 1


class LocalCopyMachine(RuleBasedStateMachine):
    """One router's local copy, with other routers writing to the same Redis."""

    def __init__(self) -> None:
        super().__init__()
        self.redis = ModelRedis()
        self.copy = LocalCopy()
        self.heard = Heard(self.copy)
        self.copy.add_listener(self.heard.listener)
        self.copy.on_change = self.heard.on_change
        self.inbox: list[str] | None = None  # the subscription's undelivered messages
        self.scan: dict[str, Assignment] | None = None  # a bulk read under way
        self.visited: set[str] = set()
        self.pumping = False  # subscribed and loaded: messages are applied
        self.commands: list[Command] = []

    # -- other routers --------------------------------------------------------------------

    @rule(
        kind=st.sampled_from(["create", "move", "settle", "remove"]),
        session=st.sampled_from(SESSIONS),
        instance=st.sampled_from(INSTANCES),
        cas=st.booleans(),
        moving=st.booleans(),
    )
    def foreign_write(self, kind: str, session: str, instance: str, cas: bool, moving: bool) -> None:
        current = self.redis.assignments().get(session)
        expected = current.epoch if current and (cas or kind == "settle") else None
        self.redis.run(Op(kind, session, instance, expected, moving))

    # -- this router's commands -----------------------------------------------------------

    @precondition(lambda self: len(self.commands) < 4)
    @rule(
        kind=st.sampled_from(["create", "move", "settle", "remove", "get"]),
        session=st.sampled_from(SESSIONS),
        instance=st.sampled_from(INSTANCES),
        cas=st.booleans(),
        moving=st.booleans(),
    )
    def own_begin(self, kind: str, session: str, instance: str, cas: bool, moving: bool) -> None:
        # Like a caller of RedisStore: the expected epoch is what the copy knows.
        cached = self.copy.map.get(session)
        expected = cached.epoch if cached and (cas or kind == "settle") else None
        context = self.copy.command()
        generation = context.__enter__()
        self.commands.append(Command(Op(kind, session, instance, expected, moving), context, generation))

    @precondition(lambda self: any(c.reply is None for c in self.commands))
    @rule(data=st.data())
    def own_execute(self, data: st.DataObject) -> None:
        waiting = [c for c in self.commands if c.reply is None]
        command = data.draw(st.sampled_from(waiting))
        command.reply = self.redis.run(command.op)

    @precondition(lambda self: any(c.reply is not None for c in self.commands))
    @rule(data=st.data())
    def own_reply(self, data: st.DataObject) -> None:
        """The reply reaches the copy, as RedisStore applies it; then the command ends."""
        command = data.draw(st.sampled_from([c for c in self.commands if c.reply is not None]))
        self.apply_reply(command)

    @precondition(lambda self: bool(self.commands))
    @rule(data=st.data())
    def own_fail(self, data: st.DataObject) -> None:
        """A timeout or lost connection: the command may or may not have run in Redis."""
        command = data.draw(st.sampled_from(self.commands))
        self.end(command)

    def apply_reply(self, command: Command) -> None:
        reply, op, generation = command.reply, command.op, command.generation
        assert reply is not None
        before = dict(self.copy.map)
        calls = self.heard.on_change_calls
        if len(reply) > 1:
            found = parse_value(op.session, str(reply[1]))
            if op.kind == "remove" and reply[0] == 1:
                # A removal needs no generation: it drops only the epoch it removed or older.
                self.note_removal(op.session, found.epoch)
                self.copy.forget(op.session, found.epoch)
            else:
                self.copy.learn(found, generation=generation)
                if generation != self.copy.generation:
                    assert self.copy.map == before, "a reply from before a bulk read changed the copy"
        assert self.heard.on_change_calls == calls
        self.end(command)

    def end(self, command: Command) -> None:
        self.commands.remove(command)
        command.context.__exit__(None, None, None)
        if not self.commands:
            self.heard.tombstones.clear()

    def note_removal(self, session: str, epoch: int) -> None:
        if self.commands:
            self.heard.tombstones[session] = max(epoch, self.heard.tombstones.get(session, -1))

    # -- the subscription and bulk reads ----------------------------------------------------

    @precondition(lambda self: self.inbox is not None)
    @rule()
    def lose_subscription(self) -> None:
        """The pub/sub connection drops: undelivered messages are lost, a scan stops."""
        assert self.inbox is not None
        self.redis.subscribers.remove(self.inbox)
        self.inbox, self.scan, self.pumping = None, None, False

    @precondition(lambda self: self.inbox is None)
    @rule()
    def subscribe(self) -> None:
        """Subscribe, then start the bulk read (as the sync loop does)."""
        self.inbox = []
        self.redis.subscribers.append(self.inbox)
        self.scan, self.visited = {}, set()

    @precondition(lambda self: self.scan is not None)
    @rule(session=st.sampled_from(SESSIONS))
    def scan_visit(self, session: str) -> None:
        """HSCAN reaches a session's bucket (maybe again, after a rehash)."""
        assert self.scan is not None
        self.visited.add(session)
        value = self.redis.hash.get(session)
        if value is not None:
            add_scanned(self.scan, {session: value})

    @precondition(lambda self: self.scan is not None and self.visited == set(SESSIONS))
    @rule()
    def scan_done(self) -> None:
        assert self.scan is not None
        loads, generation = self.copy.loads, self.copy.generation
        calls = (self.heard.listener_calls, self.heard.on_change_calls)
        self.heard.foreign = self.heard.bulk = True
        try:
            self.copy.replace(self.scan)
        finally:
            self.heard.foreign = self.heard.bulk = False
        assert (self.copy.loads, self.copy.generation) == (loads + 1, generation + 1)
        if loads == 0:
            # The initial load is not news: nobody is told, the view starts from it.
            assert (self.heard.listener_calls, self.heard.on_change_calls) == calls
            self.heard.view = dict(self.copy.map)
        # What a bulk read brings back may be older than a removal seen while commands ran
        # (the scan read it first); messages that follow it remove it again.
        self.heard.tombstones.clear()
        self.scan, self.pumping = None, True

    @precondition(lambda self: self.pumping and bool(self.inbox))
    @rule(twice=st.booleans())
    def deliver(self, twice: bool) -> None:
        assert self.inbox is not None
        message = self.inbox.pop(0)
        change = json.loads(message)
        if change["op"] == "del":
            self.note_removal(change["s"], change["e"])
        self.heard.foreign = True
        try:
            self.copy.apply_message(message)
            if twice:
                assert not self.copy.apply_message(message), "a duplicate changed the copy"
        finally:
            self.heard.foreign = False

    # -- what holds at every step -------------------------------------------------------------

    @invariant()
    def callbacks_saw_nothing_wrong(self) -> None:
        assert self.heard.problems == []

    @invariant()
    def counts_are_a_recount(self) -> None:
        assert self.copy.counts == dict(Counter(a.instance for a in self.copy.map.values()))
        assert all(n > 0 for n in self.copy.counts.values())
        assert len(self.copy) == len(self.copy.map)

    @invariant()
    def listeners_saw_every_change(self) -> None:
        assert self.heard.view == self.copy.map

    @invariant()
    def keys_match_values(self) -> None:
        assert all(a.session == s for s, a in self.copy.map.items())

    @rule(order=st.permutations(["replies", "read", "messages"]))
    def converges(self, order: list[str]) -> None:
        """Let everything arrive, in the given order: every command ends (run, then its
        reply applied); the subscription is (re)made and the bulk read finishes; every
        message is delivered. Then the copy is exactly what Redis holds."""
        for step in [*order, "read", "messages"]:
            if step == "replies":
                for command in list(self.commands):
                    if command.reply is None:
                        command.reply = self.redis.run(command.op)
                    self.apply_reply(command)
            elif step == "read":
                if self.inbox is None:
                    self.subscribe()
                if self.scan is not None:
                    for session in SESSIONS:
                        self.scan_visit(session)
                    self.scan_done()
            else:
                while self.pumping and self.inbox:
                    self.deliver(twice=False)
        assert not self.commands and self.heard.problems == []
        assert self.copy.map == self.redis.assignments()
        assert self.copy.counts == dict(Counter(a.instance for a in self.redis.assignments().values()))

    def teardown(self) -> None:
        self.converges(["replies", "read", "messages"])


LocalCopyMachine.TestCase.settings = settings(
    max_examples=EXAMPLES or 300, stateful_step_count=60, deadline=None, derandomize=not EXAMPLES
)
test_local_copy_follows_redis = LocalCopyMachine.TestCase


# -- formats ------------------------------------------------------------------------------------


@given(
    session=st.text(min_size=1),
    instance=st.text(),
    epoch=st.integers(min_value=0, max_value=2**63),
    moving=st.booleans(),
)
def test_a_hash_value_reads_back(session: str, instance: str, epoch: int, moving: bool) -> None:
    a = Assignment(session, instance, epoch, moving)
    assert parse_value(session, value_of(a)) == a


@given(st.one_of(st.text(), st.builds(json.dumps, st.dictionaries(st.sampled_from(["op", "s", "i", "e", "m"]), st.one_of(st.none(), st.integers(), st.text(max_size=3), st.booleans())))))
def test_a_malformed_message_changes_nothing_and_never_raises(data: str) -> None:
    copy = LocalCopy()
    copy.learn(Assignment("s", "n1", 5))
    before = dict(copy.map)
    changed = copy.apply_message(data)
    assert changed == (copy.map != before)
    if not changed:
        assert copy.map == before and copy.counts == {"n1": 1}


def test_a_malformed_message_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    copy = LocalCopy()
    with caplog.at_level(logging.WARNING, logger="router.store.redis"):
        assert copy.apply_message("{not json") is False
        assert copy.apply_message(json.dumps({"op": "set", "s": "s"})) is False
    assert [r.getMessage() for r in caplog.records] == ["redis store: ignored a malformed change message"] * 2


# -- the rules, one example each ------------------------------------------------------------------


def msg(op: str, session: str, instance: str, epoch: int, moving: bool = False) -> str:
    change: dict[str, object] = {"op": op, "s": session, "i": instance, "e": epoch}
    if moving:
        change["m"] = True
    return json.dumps(change)


def test_a_tombstone_wins_over_a_stale_message_while_a_command_runs() -> None:
    copy = LocalCopy()
    with copy.command():
        # Our remove's reply came first; the message of the create it removed comes late.
        assert copy.forget("s", 5) is False
        assert copy.apply_message(msg("set", "s", "n1", 5)) is False
        assert copy.map == {}
        assert copy.apply_message(msg("set", "s", "n2", 6)) is True  # a later create is news
    assert copy.map == {"s": Assignment("s", "n2", 6)}


def test_tombstones_last_only_while_commands_are_in_flight() -> None:
    copy = LocalCopy()
    with copy.command():
        with copy.command():
            copy.forget("s", 5)
        assert copy.learn(Assignment("s", "n1", 5)) is False  # the outer command still runs
    # None in flight: the message stream is ordered, so nothing stale can come any more.
    assert copy.learn(Assignment("s", "n1", 5)) is True


def test_a_reply_to_a_command_begun_before_a_bulk_read_is_dropped() -> None:
    copy = LocalCopy()
    copy.replace({})
    with copy.command() as generation:
        copy.replace({})  # reconnect: the session was removed meanwhile, message lost
        assert copy.learn(Assignment("s", "n1", 7), generation=generation) is False
        assert copy.map == {}
    with copy.command() as generation:
        assert copy.learn(Assignment("s", "n1", 8), generation=generation) is True


def test_same_epoch_goes_from_moving_to_settled_never_back() -> None:
    copy = LocalCopy()
    assert copy.apply_message(msg("set", "s", "n2", 4, moving=True))
    assert copy.apply_message(msg("set", "s", "n2", 4))
    assert copy.apply_message(msg("set", "s", "n2", 4, moving=True)) is False  # late
    assert copy.apply_message(msg("set", "s", "n1", 3)) is False  # older epoch
    assert copy.apply_message(msg("del", "s", "n1", 3)) is False  # removal of an older one
    assert copy.map == {"s": Assignment("s", "n2", 4)}
    assert copy.apply_message(msg("del", "s", "n2", 4)) and copy.map == {} and copy.counts == {}


def test_bulk_reads_tell_the_differences_but_the_first_load_is_silent() -> None:
    heard: list[tuple[str, Assignment | None]] = []
    foreign: list[tuple[str, Assignment | None]] = []
    copy = LocalCopy(lambda a, s: foreign.append((s, a)))
    copy.add_listener(lambda s, a: heard.append((s, a)))
    kept, old, new = Assignment("k", "n1", 1), Assignment("o", "n1", 2), Assignment("n", "n2", 3)
    copy.replace({"k": kept, "o": old})
    assert heard == foreign == [] and copy.loads == 1 and copy.counts == {"n1": 2}
    copy.replace({"k": kept, "n": new})
    assert sorted(heard, key=str) == sorted(foreign, key=str) == sorted([("n", new), ("o", None)], key=str)
    assert copy.counts == {"n1": 1, "n2": 1} and copy.loads == 2


def test_own_writes_reach_listeners_not_on_change_and_a_failing_callback_is_contained(
    caplog: pytest.LogCaptureFixture,
) -> None:
    foreign: list[str] = []
    heard: list[str] = []
    copy = LocalCopy(lambda a, s: foreign.append(s))

    def broken(session: str, assignment: Assignment | None) -> None:
        raise RuntimeError("bug")

    copy.add_listener(broken)
    copy.add_listener(lambda s, a: heard.append(s))
    copy.add_listener(broken)  # once only
    with caplog.at_level(logging.ERROR, logger="router.store.redis"), copy.command() as generation:
        assert copy.learn(Assignment("own", "n1", 1), generation=generation)
    assert copy.apply_message(msg("set", "theirs", "n1", 2))
    assert heard == ["own", "theirs"] and foreign == ["theirs"]
    assert sum("listener failed" in r.getMessage() for r in caplog.records) == 2
    copy.remove_listener(broken)
    copy.remove_listener(broken)  # no error
    assert copy.forget("own", 1) and heard == ["own", "theirs", "own"]


def test_a_scan_keeps_the_later_state_of_a_field_returned_twice() -> None:
    fresh: dict[str, Assignment] = {}
    add_scanned(fresh, {"s": "n1:4:m", "t": "n1:9"})
    add_scanned(fresh, {"s": "n1:4", "t": "n2:8"})  # rehash: seen again
    assert fresh == {"s": Assignment("s", "n1", 4), "t": Assignment("t", "n1", 9)}
