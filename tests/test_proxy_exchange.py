"""The data path in-process: a real client connection, exchange, upstream connection and
pool, fed bytes from both sides through fake transports (no sockets, no processes).

Each row: what the client sends, what the instance does, the bytes the client gets, and the
trail of phases the exchange went through (h11-style: events in, state and bytes out).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from router.config.model import Config, InstanceConfig, LimitsConfig
from router.instances import Instance
from router.proxy import connection as connection_module
from router.proxy.connection import ClientConnection
from router.proxy.exchange import Exchange
from router.proxy.flow import DL_ACTIVE, DL_HEADERS, DL_IDLE
from router.proxy.phase import Phase
from router.proxy.server import ProxyServer
from router.sessions.extractor import SessionExtractor
from router.stats import new_stats
from router.transport.upstream import UpstreamConnection, UpstreamPool
from tests.fakes import pure_only

pytestmark = pytest.mark.unit

P = Phase
OK_2 = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"


class FakeTransport:
    def __init__(self) -> None:
        self.out = bytearray()
        self.closed = False
        self.aborted = False

    def write(self, data: bytes) -> None:
        self.out += data

    def writelines(self, parts: list[bytes]) -> None:
        for p in parts:
            self.out += p

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = self.aborted = True

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("10.0.0.7", 50000) if name == "peername" else default

    def take(self) -> bytes:
        data = bytes(self.out)
        self.out.clear()
        return data


class Pulse:
    async def wait(self, timeout: float) -> None:
        await asyncio.sleep(0)


class FakeRouter:
    """What the proxy asks of ``router.routing.Router``, with one instance."""

    def __init__(self, **config: Any) -> None:
        pure_only("a fake router in place of router.routing.Router")
        self.config = Config(instances=(InstanceConfig("waha-1", "http://10.0.0.5:3000"),),
                             profile="generic", **config)
        self.inst = Instance(self.config.instances[0], metrics=False)
        self.relay = None
        self.fan_out_routes = frozenset(self.config.sessions.fan_out)
        self.extractor = SessionExtractor(self.config.sessions, "generic")
        self.passive_statuses = self.config.passive.statuses
        self.own_stats = new_stats(False)
        self.changed = Pulse()
        self.fleet = self
        self.failures: list[bool] = []
        self.store = self
        self.healthy = True

    def __iter__(self) -> Any:
        return iter([self.inst])

    def least_busy(self, exclude: Instance | None = None) -> Instance:
        return self.inst

    def routable_instance(self, session: str) -> Instance | None:
        return self.inst if session == "alice" else None

    async def routable(self, session: str, deadline: float) -> Instance:
        await asyncio.sleep(0)
        return self.inst

    def passive_failure(self, inst: Instance, *, connect_error: bool) -> None:
        self.failures.append(connect_error)

    def passive_success(self, inst: Instance) -> None: ...

    def not_found(self, session: str) -> None: ...


class Traced(Exchange):
    """An exchange that keeps the trail of its phases."""

    trails: list[list[Phase]] = []
    _slot = Exchange.__dict__["phase"]

    @property
    def phase(self) -> Phase:
        value: Phase = Traced._slot.__get__(self)
        return value

    @phase.setter
    def phase(self, value: Phase) -> None:
        if value is P.QUEUED:
            self.trail: list[Phase] = [value]
            Traced.trails.append(self.trail)
        else:
            self.trail.append(value)
        Traced._slot.__set__(self, value)


class Rig:
    def __init__(self, **config: Any) -> None:
        self.router = FakeRouter(**config)
        self.server = ProxyServer(self.router)  # type: ignore[arg-type]
        self.client = FakeTransport()
        self.conn = ClientConnection(self.server)
        self.conn.connection_made(self.client)  # type: ignore[arg-type]
        self.upstreams: list[tuple[UpstreamConnection, FakeTransport]] = []

    def pooled(self, *, used: int = 0) -> UpstreamConnection:
        """A warm connection in the instance's pool (``used``: requests it served before)."""
        up = self.new_upstream()
        up.used = used
        self.router.inst.pool.release(up)
        return up

    def new_upstream(self) -> UpstreamConnection:
        up = UpstreamConnection(self.router.inst.pool)
        t = FakeTransport()
        up.connection_made(t)  # type: ignore[arg-type]
        self.upstreams.append((up, t))
        return up

    def sent(self, i: int = -1) -> bytes:
        return self.upstreams[i][1].take()


@pytest.fixture
async def rig(monkeypatch: pytest.MonkeyPatch) -> Rig:
    monkeypatch.setattr(connection_module, "Exchange", Traced)
    Traced.trails = []
    return Rig()


GET = b"GET /api/x HTTP/1.1\r\nHost: r\r\nX-Session-Id: alice\r\nX-Request-Id: rid-1\r\n\r\n"
POST = (b"POST /api/sendText HTTP/1.1\r\nHost: r\r\nX-Session-Id: alice\r\n"
        b"X-Request-Id: rid-1\r\nContent-Length: 2\r\n\r\n{}")
HEAD_OK = b"HTTP/1.1 200 OK\r\nX-Router-Instance: waha-1\r\nX-Request-Id: rid-1\r\n"


async def test_known_session_on_a_warm_connection_is_callbacks_only(rig: Rig) -> None:
    up = rig.pooled()
    rig.conn.data_received(GET)
    ex = rig.conn.exchange
    assert isinstance(ex, Exchange) and ex.task is None and ex.phase is P.SENT
    assert rig.sent().startswith(b"GET /api/x HTTP/1.1\r\nHost: 10.0.0.5:3000\r\n")
    up.data_received(OK_2)
    assert rig.client.take() == HEAD_OK + b"Content-Length: 2\r\n\r\n{}"
    assert Traced.trails == [[P.QUEUED, P.ROUTING, P.SENT, P.STREAMING, P.DONE]]
    assert ex.task is None  # no task, no future: protocol callbacks only
    assert rig.router.inst.pool.idle == [up] and rig.conn.exchange is None


Step = Callable[[Rig], None]


def busy(rig: Rig) -> UpstreamConnection:
    """The upstream connection serving the exchange."""
    return next(up for up, _ in rig.upstreams if up.listener is not None)


def closes(rig: Rig) -> None:
    busy(rig).connection_lost(None)


def answers(raw: bytes) -> Step:
    return lambda rig: busy(rig).data_received(raw)


# (name, request, requests the pooled connection served before, what the instance does,
#  the client's bytes (prefix), the phases, passive failures counted)
ROWS: list[tuple[str, bytes, int, list[Step], bytes, list[Phase], list[bool]]] = [
    ("a POST in flight when the instance dies: 502, never sent again",
     POST, 0, [closes], b"HTTP/1.1 502 Bad Gateway\r\n",
     [P.QUEUED, P.ROUTING, P.SENT, P.DONE], [False]),
    ("a GET in flight when the instance dies: sent again",
     GET, 0, [closes, answers(OK_2)], HEAD_OK + b"Content-Length: 2\r\n\r\n{}",
     [P.QUEUED, P.ROUTING, P.SENT, P.BACKOFF, P.HOLDING, P.SENT, P.STREAMING, P.DONE], [False]),
    ("the keep-alive race: a fresh connection, no failure counted",
     POST.replace(b"Content-Length: 2\r\n\r\n{}", b"Content-Length: 0\r\n\r\n"), 1,
     [closes, answers(OK_2)], HEAD_OK + b"Content-Length: 2\r\n\r\n{}",
     [P.QUEUED, P.ROUTING, P.SENT, P.CONNECTING, P.SENT, P.STREAMING, P.DONE], []),
    ("a response cut short: the client connection is aborted",
     GET, 0, [answers(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"), closes],
     HEAD_OK + b"Content-Length: 10\r\n\r\nabc",
     [P.QUEUED, P.ROUTING, P.SENT, P.STREAMING, P.ABORTED], []),
    ("a body delimited by the close: re-chunked, and complete",
     GET, 0, [answers(b"HTTP/1.1 200 OK\r\n\r\nabc"), closes],
     HEAD_OK + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
     [P.QUEUED, P.ROUTING, P.SENT, P.STREAMING, P.DONE], []),
    ("a 503 from the instance counts as a passive failure",
     GET, 0, [answers(b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n")],
     b"HTTP/1.1 503 Busy\r\n", [P.QUEUED, P.ROUTING, P.SENT, P.STREAMING, P.DONE], [False]),
]


@pytest.mark.parametrize(("request_bytes", "used", "steps", "client", "trail", "failures"),
                         [r[1:] for r in ROWS], ids=[r[0] for r in ROWS])
async def test_when_the_instance_fails(
    rig: Rig, monkeypatch: pytest.MonkeyPatch, request_bytes: bytes, used: int,
    steps: list[Step], client: bytes, trail: list[Phase], failures: list[bool],
) -> None:
    rig.pooled()  # a second warm connection, for a resend
    rig.pooled(used=used)  # the warmest: used first

    async def connect(pool: UpstreamPool, timeout: float) -> UpstreamConnection:
        return rig.new_upstream()

    monkeypatch.setattr(UpstreamPool, "connect", connect)
    rig.conn.data_received(request_bytes)
    for step in steps:
        step(rig)
        for _ in range(5):
            await asyncio.sleep(0)
    assert rig.client.take().startswith(client)
    assert Traced.trails == [trail]
    assert rig.router.failures == failures


async def test_local_endpoint_and_head(rig: Rig) -> None:
    rig.conn.data_received(b"GET /healthz HTTP/1.1\r\n\r\n")
    assert rig.client.take().startswith(b"HTTP/1.1 200 OK\r\n")
    up = rig.pooled()
    rig.conn.data_received(GET.replace(b"GET", b"HEAD", 1))
    up.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n")
    assert rig.client.take() == HEAD_OK + b"Content-Length: 1234\r\n\r\n"
    assert Traced.trails == [[P.QUEUED, P.ROUTING, P.DONE],
                             [P.QUEUED, P.ROUTING, P.SENT, P.STREAMING, P.DONE]]


async def test_a_pipelined_request_answered_while_queued_is_never_sent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(connection_module, "Exchange", Traced)
    Traced.trails = []
    rig = Rig(limits=LimitsConfig(max_body=10))
    up = rig.pooled()
    rig.conn.data_received(GET + b"POST /api/sendText HTTP/1.1\r\nX-Session-Id: alice\r\n"
                           b"Content-Length: 20\r\n\r\n" + b"x" * 20)
    assert rig.sent().startswith(b"GET /api/x ")
    up.data_received(OK_2)
    # The 413 goes out at once and the connection closes, so the GET's answer is lost: an
    # early error for a queued request is answered out of turn (as before; not changed here).
    assert rig.client.take().startswith(b"HTTP/1.1 413 ")
    assert rig.client.closed and rig.sent() == b""  # the POST never went to the instance
    assert Traced.trails == [[P.QUEUED, P.ROUTING, P.SENT, P.STREAMING, P.DONE],
                             [P.QUEUED, P.DONE]]


async def test_the_header_deadline_runs_from_the_first_byte_of_a_head(rig: Rig) -> None:
    up = rig.pooled()
    rig.conn.data_received(b"GET /api/x HTTP/1.1\r\nX-Sess")
    assert rig.conn.deadline_kind == DL_HEADERS
    first = rig.conn.deadline
    rig.conn.data_received(b"ion-Id: alice\r\n")  # more bytes do not extend it (slowloris)
    assert (rig.conn.deadline_kind, rig.conn.deadline) == (DL_HEADERS, first)
    rig.conn.data_received(b"\r\n")
    assert rig.conn.deadline_kind == DL_ACTIVE
    up.data_received(OK_2)
    assert rig.conn.deadline_kind == DL_IDLE
    rig.conn.data_received(GET)  # a whole head in one read: straight to the answer's deadline
    assert rig.conn.deadline_kind == DL_ACTIVE


CHUNKED_2 = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"


@pytest.mark.parametrize(("version", "connection", "framing", "closes"), [
    # HTTP/1.1, keep-alive implied: told nothing, the body re-chunked.
    (b"1.1", b"", b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n", False),
    # HTTP/1.1 saying keep-alive anyway: still 1.1 (the parser is asked).
    (b"1.1", b"Connection: keep-alive\r\n", b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
     False),
    # HTTP/1.0 asking for keep-alive: no chunking for it, so the body ends with the close.
    (b"1.0", b"Connection: keep-alive\r\n", b"Connection: close\r\n\r\n{}", True),
    # HTTP/1.0 without: the same, and the connection closes anyway.
    (b"1.0", b"", b"Connection: close\r\n\r\n{}", True),
    (b"1.1", b"Connection: close\r\n", b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
     b"2\r\n{}\r\n0\r\n\r\n", True),
])
async def test_the_client_version_decides_the_framing(
    rig: Rig, version: bytes, connection: bytes, framing: bytes, closes: bool
) -> None:
    """Whether the client speaks HTTP/1.1 is told from keep-alive where it can be (an
    HTTP/1.0 client keeps a connection only when it asks), from the parser otherwise."""
    up = rig.pooled()
    rig.conn.data_received(b"GET /api/x HTTP/" + version + b"\r\nHost: r\r\nX-Session-Id: alice\r\n"
                           b"X-Request-Id: rid-1\r\n" + connection + b"\r\n")
    up.data_received(CHUNKED_2)
    assert rig.client.take() == HEAD_OK + framing
    assert rig.client.closed is closes
