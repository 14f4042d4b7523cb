"""HTTP framing of the data path, as tables of bytes (pure: ``router.proxy.framing``).

Request rows: the raw request a client sent (parsed by httptools, as the proxy does) and
the exact bytes the instance gets. Response rows: the raw head an instance sent, what the
client asked for, and the exact head the client gets plus how the body travels.
"""

from __future__ import annotations

import contextlib

import httptools
import pytest

from router.proxy.framing import (
    CLOSE,
    EOF_DELIMITED,
    OUT_CHUNKED,
    RequestHead,
    chunk,
    response_head,
)

pytestmark = pytest.mark.unit


class _Req:
    def __init__(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.complete = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.complete = True


def head_of(raw: bytes) -> tuple[RequestHead, list[bytes], bool]:
    """``raw`` parsed as the proxy parses a client's request, and its head read."""
    r = _Req()
    p = httptools.HttpRequestParser(r)
    with contextlib.suppress(httptools.HttpParserUpgrade):
        p.feed_data(raw)
    head = RequestHead(p.get_method(), r.url, r.headers, p.should_upgrade())
    return head, r.body, r.complete


KEYLESS = b""
INST_KEY = b"X-Api-Key: inst-key\r\napikey: inst-key\r\n"

# (name, client request, instance base_path, instance key line, bytes the instance gets)
REQUESTS = [
    (
        "plain GET: Host becomes the instance's, X-Forwarded-*, X-Request-Id added",
        b"GET /api/sessions/s1/me HTTP/1.1\r\nHost: router.example\r\nX-Session-Id: s1\r\n\r\n",
        "", KEYLESS,
        b"GET /api/sessions/s1/me HTTP/1.1\r\nHost: inst:3000\r\nX-Session-Id: s1\r\n"
        b"X-Forwarded-For: 10.0.0.7\r\nX-Forwarded-Proto: http\r\nX-Request-Id: rid-1\r\n"
        b"X-Forwarded-Host: router.example\r\n\r\n",
    ),
    (
        "hop-by-hop and spoofed forwarding headers dropped; X-Forwarded-For appended to",
        b"GET /x HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, X-Secret\r\nKeep-Alive: 5\r\n"
        b"Proxy-Connection: x\r\nProxy-Authorization: Basic Zm9v\r\nTE: trailers\r\n"
        b"Trailer: X-T\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: evil\r\n"
        b"X-Forwarded-For: 1.2.3.4\r\nAccept: */*\r\n\r\n",
        "", KEYLESS,
        b"GET /x HTTP/1.1\r\nHost: inst:3000\r\nAccept: */*\r\n"
        b"X-Forwarded-For: 1.2.3.4, 10.0.0.7\r\nX-Forwarded-Proto: http\r\nX-Request-Id: rid-1\r\n"
        b"X-Forwarded-Host: h\r\n\r\n",
    ),
    (
        "the client's key goes on when the instance has none (both spellings kept as sent)",
        b"GET /x HTTP/1.1\r\nX-Api-Key: client-key\r\napikey: client-key\r\n\r\n",
        "", KEYLESS,
        b"GET /x HTTP/1.1\r\nHost: inst:3000\r\nX-Forwarded-For: 10.0.0.7\r\n"
        b"X-Forwarded-Proto: http\r\nX-Request-Id: rid-1\r\n"
        b"X-Api-Key: client-key\r\napikey: client-key\r\n\r\n",
    ),
    (
        "the instance's own key replaces the client's",
        b"GET /x HTTP/1.1\r\nX-Api-Key: client-key\r\n\r\n",
        "", INST_KEY,
        b"GET /x HTTP/1.1\r\nHost: inst:3000\r\nX-Forwarded-For: 10.0.0.7\r\n"
        b"X-Forwarded-Proto: http\r\nX-Request-Id: rid-1\r\n" + INST_KEY + b"\r\n",
    ),
    (
        "Content-Length body: length rewritten, body as read",
        b"POST /api/sendText HTTP/1.1\r\nContent-Length: 11\r\nContent-Type: application/json\r\n"
        b"\r\n{\"a\":\"b\"} \n",
        "", KEYLESS,
        b"POST /api/sendText HTTP/1.1\r\nHost: inst:3000\r\nContent-Type: application/json\r\n"
        b"X-Forwarded-For: 10.0.0.7\r\nX-Forwarded-Proto: http\r\nX-Request-Id: rid-1\r\n"
        b"Content-Length: 11\r\n\r\n{\"a\":\"b\"} \n",
    ),
    (
        "chunked body re-chunked as parsed, with the last chunk once complete",
        b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        "", KEYLESS,
        b"POST /x HTTP/1.1\r\nHost: inst:3000\r\nX-Forwarded-For: 10.0.0.7\r\n"
        b"X-Forwarded-Proto: http\r\nX-Request-Id: rid-1\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
    ),
    (
        "absolute-form target made origin-form; the instance's base path put before it",
        b"GET http://router.example/api/x?y=1 HTTP/1.1\r\nHost: router.example\r\n\r\n",
        "/waha", KEYLESS,
        b"GET /waha/api/x?y=1 HTTP/1.1\r\nHost: inst:3000\r\nX-Forwarded-For: 10.0.0.7\r\n"
        b"X-Forwarded-Proto: http\r\nX-Request-Id: rid-1\r\nX-Forwarded-Host: router.example\r\n\r\n",
    ),
    (
        "a WebSocket upgrade keeps Connection: Upgrade and Upgrade",
        b"GET /ws HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Key: k\r\n\r\n",
        "", KEYLESS,
        b"GET /ws HTTP/1.1\r\nHost: inst:3000\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Key: k\r\nX-Forwarded-For: 10.0.0.7\r\nX-Forwarded-Proto: http\r\n"
        b"X-Request-Id: rid-1\r\n\r\n",
    ),
    (
        "Expect is the router's business: never forwarded",
        b"POST /x HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 0\r\n\r\n",
        "", KEYLESS,
        b"POST /x HTTP/1.1\r\nHost: inst:3000\r\nX-Forwarded-For: 10.0.0.7\r\n"
        b"X-Forwarded-Proto: http\r\nX-Request-Id: rid-1\r\nContent-Length: 0\r\n\r\n",
    ),
]


@pytest.mark.parametrize(("raw", "base_path", "key_line", "expected"),
                         [r[1:] for r in REQUESTS], ids=[r[0] for r in REQUESTS])
def test_request_as_the_instance_gets_it(
    raw: bytes, base_path: str, key_line: bytes, expected: bytes
) -> None:
    head, body, complete = head_of(raw)
    head.request_id = head.request_id or "rid-1"
    assert head.serialize(base_path, b"Host: inst:3000\r\n", key_line, b"10.0.0.7", body,
                          complete) == expected


# (client request, what RequestHead notes about it; header_map: what the extractor reads)
NOTED = [
    (b"GET /a/b?x-api-key=k&q=1 HTTP/1.1\r\nX-Request-Id: abc-123\r\n\r\n",
     {"method_str": "GET", "path": "/a/b", "query": "x-api-key=k&q=1", "request_id": "abc-123",
      "content_length": None, "chunked_in": False, "expect_continue": False}),
    (b"GET / HTTP/1.1\r\nX-Request-Id: has space\r\n\r\n",  # not echoed: invalid
     {"request_id": "", "path": "/"}),
    (b"POST /p HTTP/1.1\r\nContent-Length: 5\r\nExpect: 100-Continue\r\n\r\n",
     {"content_length": 5, "expect_continue": True, "header_map": {"content-length": "5"}}),
    (b"PUT /p HTTP/1.1\r\nTransfer-Encoding: chunked\r\nX-Session-Id: s9\r\n\r\n",
     {"chunked_in": True, "content_length": None,
      "header_map": {"transfer-encoding": "chunked", "x-session-id": "s9"}}),
    (b"PATCH /p HTTP/1.1\r\nApiKey: k1\r\n\r\n",
     {"method_str": "PATCH", "client_key_line": b"ApiKey: k1\r\n", "forward_lines": []}),
    (b"GET http://h/only-host HTTP/1.1\r\n\r\n", {"target": b"/only-host", "xfh": b""}),
]


@pytest.mark.parametrize(("raw", "facts"), NOTED)
def test_what_the_head_notes(raw: bytes, facts: dict[str, object]) -> None:
    head, _, _ = head_of(raw)
    for name, value in facts.items():
        assert getattr(head, name) == value, name
    assert head.has_body() == bool(head.chunked_in or head.content_length)


def test_chunk() -> None:
    assert b"".join(chunk(b"hello world, 16b")) == b"10\r\nhello world, 16b\r\n"


# -- responses -----------------------------------------------------------------------------


class _Resp:
    def __init__(self) -> None:
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []

    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))


def response_of(raw: bytes) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
    r = _Resp()
    p = httptools.HttpResponseParser(r)
    with contextlib.suppress(httptools.HttpParserUpgrade):
        p.feed_data(raw)
    return p.get_status_code(), r.reason, r.headers


TAIL = b"X-Router-Instance: waha-1\r\nX-Request-Id: rid-1\r\n"
# (name, instance's head, has body, client is HTTP/1.1, must close, client's head, flags)
RESPONSES = [
    ("length kept, keep-alive implied for 1.1",
     b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n",
     True, True, False,
     b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n" + TAIL + b"Content-Length: 2\r\n\r\n",
     0),
    ("chunked from the instance: chunked to the client",
     b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
     True, True, False,
     b"HTTP/1.1 200 OK\r\n" + TAIL + b"Transfer-Encoding: chunked\r\n\r\n",
     OUT_CHUNKED),
    ("delimited by the close: re-chunked for a 1.1 client, its end is the close",
     b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n",
     True, True, False,
     b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n" + TAIL + b"Transfer-Encoding: chunked\r\n\r\n",
     OUT_CHUNKED | EOF_DELIMITED),
    ("delimited by the close, to a 1.0 client: the router closes too",
     b"HTTP/1.0 200 OK\r\n\r\n",
     True, False, False,
     b"HTTP/1.1 200 OK\r\n" + TAIL + b"Connection: close\r\n\r\n",
     EOF_DELIMITED | CLOSE),
    ("chunked to a 1.0 client: plain bytes, then close",
     b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
     True, False, False,
     b"HTTP/1.1 200 OK\r\n" + TAIL + b"Connection: close\r\n\r\n",
     CLOSE),
    ("a 1.0 client that asked for keep-alive is told so",
     b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
     True, False, False,
     b"HTTP/1.1 200 OK\r\n" + TAIL + b"Content-Length: 0\r\nConnection: keep-alive\r\n\r\n",
     0),
    ("HEAD: the length is passed on, no body follows",
     b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n",
     False, True, False,
     b"HTTP/1.1 200 OK\r\n" + TAIL + b"Content-Length: 1234\r\n\r\n",
     0),
    ("204: no framing headers at all",
     b"HTTP/1.1 204 No Content\r\n\r\n",
     False, True, False,
     b"HTTP/1.1 204 No Content\r\n" + TAIL + b"\r\n",
     0),
    ("hop-by-hop and spoofed router headers from the instance dropped",
     b"HTTP/1.1 404 Not Found\r\nConnection: keep-alive, X-Foo\r\nKeep-Alive: timeout=5\r\n"
     b"Proxy-Authenticate: Basic\r\nTrailer: X-T\r\nUpgrade: h2c\r\nX-Router-Instance: other\r\n"
     b"X-Request-Id: theirs\r\nETag: \"e\"\r\nContent-Length: 9\r\n\r\n",
     True, True, False,
     b"HTTP/1.1 404 Not Found\r\nETag: \"e\"\r\n" + TAIL + b"Content-Length: 9\r\n\r\n",
     0),
    ("must close (request body unread, or the client asked): Connection: close",
     b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 2\r\n\r\n",
     True, True, True,
     b"HTTP/1.1 413 Payload Too Large\r\n" + TAIL + b"Content-Length: 2\r\nConnection: close\r\n\r\n",
     CLOSE),
    ("no reason phrase from the instance: the standard one",
     b"HTTP/1.1 503 \r\nContent-Length: 0\r\n\r\n",
     True, True, False,
     b"HTTP/1.1 503 Service Unavailable\r\n" + TAIL + b"Content-Length: 0\r\n\r\n",
     0),
    ("the instance's own reason phrase is kept",
     b"HTTP/1.1 422 Nope\r\nContent-Length: 0\r\n\r\n",
     True, True, False,
     b"HTTP/1.1 422 Nope\r\n" + TAIL + b"Content-Length: 0\r\n\r\n",
     0),
    ("lines copied as sent; hop-by-hop names in any case; lookalike names kept",
     b"HTTP/1.1 200 OK\r\nX-A:  spaced  \r\nCONNECTION: close\r\nTe-Extra: 1\r\n"
     b"X-Request-Id-Of: 2\r\ncontent-LENGTH:  5 \r\n\r\n",
     True, True, False,
     b"HTTP/1.1 200 OK\r\nX-A:  spaced  \r\nTe-Extra: 1\r\nX-Request-Id-Of: 2\r\n" + TAIL
     + b"Content-Length: 5\r\n\r\n",
     0),
    ("an HTTP/1.0 instance: the status line is the router's",
     b"HTTP/1.0 200 Fine\r\nContent-Length: 0\r\n\r\n",
     True, True, False,
     b"HTTP/1.1 200 Fine\r\n" + TAIL + b"Content-Length: 0\r\n\r\n",
     0),
    ("only dropped lines: nothing of them left",
     b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n\r\n",
     True, True, False,
     b"HTTP/1.1 200 OK\r\n" + TAIL + b"Transfer-Encoding: chunked\r\n\r\n",
     OUT_CHUNKED | EOF_DELIMITED),
    ("101: Upgrade and Connection kept, no framing, never a close",
     b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
     b"Sec-WebSocket-Accept: x\r\n\r\n",
     False, True, True,
     b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
     b"Sec-WebSocket-Accept: x\r\n" + TAIL + b"\r\n",
     0),
]


@pytest.mark.parametrize(("raw", "body", "http11", "close", "expected", "flags"),
                         [r[1:] for r in RESPONSES], ids=[r[0] for r in RESPONSES])
def test_response_head_as_the_client_gets_it(
    raw: bytes, body: bool, http11: bool, close: bool, expected: bytes, flags: int
) -> None:
    status = response_of(raw)[0]  # a head llhttp accepts, as the connection reports it
    assert response_head(raw, status, body, http11, close, b"waha-1", b"rid-1") == (
        expected, flags
    )
