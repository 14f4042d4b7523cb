"""Idempotency-Key on proxied POST/PATCH: the pure rules (tables, hypothesis), then the
exchange driven byte by byte with the in-memory key store (``test_proxy_exchange``'s rig:
fake transports, no sockets): a retry replays the kept answer and never reaches the
instance, a retry in flight gets 409, another body 422, a request that may have been sent
keeps ``outcome_unknown``, one that provably was not frees its key."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from router.errors import UpstreamConnectError
from router.idempotency.model import (
    KEPT_BODY,
    Record,
    State,
    Verdict,
    decide,
    digest,
    fingerprint,
    kept,
    valid_key,
)
from router.idempotency.store import MemoryKeys
from router.proxy import connection as connection_module
from router.proxy.phase import Phase
from router.proxy.server import ProxyServer
from router.transport.upstream import UpstreamConnection, UpstreamPool
from tests.fakes import ManualClock
from tests.test_proxy_exchange import Rig, Traced, busy

pytestmark = pytest.mark.unit

P = Phase
NOW = 1_800_000_000.0
LIMIT = 60.0


@pytest.mark.parametrize(("found", "verdict"), [
    (None, Verdict.PROCEED),
    (Record(State.IN_FLIGHT, "other", NOW), Verdict.REUSED),
    (Record(State.DONE, "other", NOW, 200), Verdict.REUSED),
    (Record(State.DONE, "fp", NOW - 3000, 201, "application/json", b"{}"), Verdict.REPLAY),
    (Record(State.UNKNOWN, "fp", NOW), Verdict.UNKNOWN),
    (Record(State.IN_FLIGHT, "fp", NOW - 1), Verdict.IN_FLIGHT),
    # claimed by a router that died: nobody knows whether it went out
    (Record(State.IN_FLIGHT, "fp", NOW - LIMIT - 1), Verdict.UNKNOWN),
])
def test_decide(found: Record | None, verdict: Verdict) -> None:
    assert decide(found, "fp", NOW, LIMIT) is verdict


@given(state=st.sampled_from(list(State)), fingerprint=st.text("0123456789abcdef", max_size=64),
       at=st.floats(0, 4e9, allow_nan=False), status=st.integers(0, 599),
       content_type=st.text(st.characters(min_codepoint=32, max_codepoint=255), max_size=40),
       body=st.binary(max_size=200))
def test_a_record_survives_its_stored_form(state: State, fingerprint: str, at: float, status: int,
                                           content_type: str, body: bytes) -> None:
    r = Record(state, fingerprint, at, status, content_type, body)
    assert Record.decode(r.encode()) == r


def test_the_scope_and_the_kept_body() -> None:
    base = ("client", "alice", "POST", "/api/sendText", "k-1")
    names = {digest(*base)}
    for i in range(5):
        other = list(base)
        other[i] += "x"
        names.add(digest(*other))
    assert len(names) == 6  # every part of the scope tells keys apart
    big = kept(200, "text/plain", b"", KEPT_BODY + 1, "fp", NOW)
    assert big.status == 200 and b"response_not_kept" in big.body
    assert kept(201, "application/json", b"{}", 2, "fp", NOW).body == b"{}"
    assert valid_key("a" * 255) and not valid_key("") and not valid_key("a" * 256)
    assert not valid_key("line\nbreak")


# -- the exchange ---------------------------------------------------------------------------


def keyed(key: str = "k-1", body: bytes = b'{"text":"hi"}') -> bytes:
    return (b"POST /api/sendText HTTP/1.1\r\nHost: r\r\nX-Session-Id: alice\r\n"
            b"Idempotency-Key: " + key.encode() + b"\r\nContent-Length: %d\r\n\r\n" % len(body)
            + body)


CREATED = b'HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{"id":"m1"}'


class KeyedRig(Rig):
    def __init__(self, **config: Any) -> None:
        super().__init__(**config)
        self.clock = ManualClock()
        self.router.clock = self.clock  # type: ignore[attr-defined]
        self.keys = MemoryKeys(self.clock)
        self.server = ProxyServer(self.router, keys=self.keys)  # type: ignore[arg-type]
        self.conn = connection_module.ClientConnection(self.server)
        self.conn.connection_made(self.client)  # type: ignore[arg-type]

    def again(self) -> None:
        """A new client connection (a retry), on the same server."""
        self.client = type(self.client)()
        self.conn = connection_module.ClientConnection(self.server)
        self.conn.connection_made(self.client)  # type: ignore[arg-type]


@pytest.fixture
async def krig(monkeypatch: pytest.MonkeyPatch) -> KeyedRig:
    monkeypatch.setattr(connection_module, "Exchange", Traced)
    Traced.trails = []
    rig = KeyedRig()

    async def connect(pool: UpstreamPool, timeout: float) -> UpstreamConnection:
        return rig.new_upstream()

    monkeypatch.setattr(UpstreamPool, "connect", connect)
    return rig


async def settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


async def test_a_retry_gets_the_kept_answer_and_never_reaches_the_instance(krig: KeyedRig) -> None:
    krig.pooled()
    krig.conn.data_received(keyed())
    await settle()
    assert krig.sent().startswith(b"POST /api/sendText HTTP/1.1\r\n")
    busy(krig).data_received(CREATED)
    first = krig.client.take()
    assert first.startswith(b"HTTP/1.1 201 Created\r\n") and first.endswith(b'{"id":"m1"}')
    assert Traced.trails[0] == [P.QUEUED, P.ROUTING, P.KEYED, P.CLAIMING, P.SENT, P.STREAMING, P.DONE]
    await settle()
    krig.again()
    krig.conn.data_received(keyed())
    await settle()
    replay = krig.client.take()
    assert replay.startswith(b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\n")
    assert b"Idempotent-Replayed: true\r\n" in replay and replay.endswith(b'{"id":"m1"}')
    assert all(t.take() == b"" for _, t in krig.upstreams)  # nothing more was sent
    assert Traced.trails[1] == [P.QUEUED, P.ROUTING, P.KEYED, P.CLAIMING, P.DONE]


async def test_in_flight_then_another_body(krig: KeyedRig) -> None:
    krig.pooled()
    krig.conn.data_received(keyed())
    await settle()
    first_conn = krig.conn
    krig.again()
    krig.conn.data_received(keyed())  # the first has no answer yet
    await settle()
    assert krig.client.take().startswith(b"HTTP/1.1 409 Conflict\r\n")
    krig.again()
    krig.conn.data_received(keyed(body=b'{"text":"other"}'))
    await settle()
    answer = krig.client.take()
    assert answer.startswith(b"HTTP/1.1 422 ") and b"idempotency_key_reused" in answer
    assert first_conn.exchange is not None  # the first is still being answered


async def test_the_instance_dies_with_it_in_flight_and_the_retry_is_never_sent(krig: KeyedRig) -> None:
    krig.pooled()
    krig.conn.data_received(keyed())
    await settle()
    krig.sent()
    busy(krig).connection_lost(None)  # written, no answer: it may have been sent
    await settle()
    assert krig.client.take().startswith(b"HTTP/1.1 502 Bad Gateway\r\n")
    krig.again()
    krig.conn.data_received(keyed())
    await settle()
    retry = krig.client.take()
    assert retry.startswith(b"HTTP/1.1 502 Bad Gateway\r\n") and b"outcome_unknown" in retry
    assert b"Idempotent-Replayed: true" in retry
    assert all(t.take() == b"" for _, t in krig.upstreams)


async def test_a_request_that_never_left_frees_its_key(krig: KeyedRig, monkeypatch: pytest.MonkeyPatch) -> None:
    async def refused(pool: UpstreamPool, timeout: float) -> UpstreamConnection:
        raise UpstreamConnectError("connection refused")

    monkeypatch.setattr(UpstreamPool, "connect", refused)
    krig.router.config = type(krig.router.config)(  # a short hold: the retries give up soon
        instances=krig.router.config.instances, profile="generic",
        failover=type(krig.router.config.failover)(hold_timeout=0.01))
    krig.conn.data_received(keyed())
    for _ in range(50):
        await asyncio.sleep(0.001)
        if krig.client.out:
            break
    assert krig.client.take().startswith(b"HTTP/1.1 502 ")
    await settle()

    async def fresh(pool: UpstreamPool, timeout: float) -> UpstreamConnection:
        return krig.new_upstream()

    monkeypatch.setattr(UpstreamPool, "connect", fresh)
    krig.again()
    krig.conn.data_received(keyed())  # the key was released: this one goes
    await settle()
    assert krig.sent().startswith(b"POST /api/sendText")


async def test_a_bad_key_and_an_orphaned_claim(krig: KeyedRig) -> None:
    krig.conn.data_received(keyed(key="x" * 300))
    await settle()
    assert krig.client.take().startswith(b"HTTP/1.1 400 ")
    # a claim left by a router that died long ago: outcome unknown, not sent
    d = digest("", "alice", "POST", "/api/sendText", "k-9")
    fp = fingerprint(b'{"text":"hi"}')
    await krig.keys.claim(d, Record(State.IN_FLIGHT, fp, krig.clock.wall() - 3600), 86400)
    krig.again()
    krig.conn.data_received(keyed(key="k-9"))
    await settle()
    assert b"outcome_unknown" in krig.client.take()


class SlowAnswer(MemoryKeys):
    """Claims at once (as a Redis call would on its way out), answers when let go."""

    def __init__(self, clock: ManualClock) -> None:
        super().__init__(clock)
        self.go = asyncio.Event()

    async def claim(self, digest: str, record: Record, ttl: float) -> Record | None:
        found = await super().claim(digest, record, ttl)
        await self.go.wait()
        return found


async def test_a_client_gone_while_its_key_is_claimed_frees_the_key(krig: KeyedRig) -> None:
    keys = krig.server.keys = SlowAnswer(krig.clock)
    krig.pooled()
    krig.conn.data_received(keyed(key="k-gone"))
    await settle()  # claimed, not yet answered
    krig.conn.connection_lost(None)
    keys.go.set()
    await settle()
    assert krig.sent() == b""  # never sent ...
    d = digest("", "alice", "POST", "/api/sendText", "k-gone")
    claim = Record(State.IN_FLIGHT, fingerprint(b'{"text":"hi"}'), krig.clock.wall())
    assert await keys.claim(d, claim, 60) is None  # ... so the key was released
