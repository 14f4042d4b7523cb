"""HTTP/1.1 framing of the data path, as pure code: bytes and facts in, bytes out.

- ``RequestHead``: one pass over a client's request head (parsed by httptools) into what is
  forwarded, what is noted (length, chunking, ``Expect``, the request id, the client's key)
  and what the session extractor reads; ``serialize`` writes the request for an instance.
- ``response_head``: an instance's response head (its bytes) made into the client's:
  hop-by-hop headers removed, ``X-Router-Instance`` and ``X-Request-Id`` spliced in, and
  the body's framing toward the client decided (length, re-chunked, or delimited by the
  close).

No I/O and no state beyond the request's own: the table tests feed bytes and compare bytes.
The exchange extends ``RequestHead`` rather than holding one, so that the hot path
allocates no second object per request; the head is read when the exchange is made.
"""

from __future__ import annotations

import re
from typing import Final

import httptools

from router.proxy.headers import REQUEST_DROP, RESPONSE_DROP, valid_request_id
from router.proxy.responses import reason

CRLF: Final = b"\r\n"
LAST_CHUNK: Final = b"0\r\n\r\n"
CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"

_METHODS = {m.encode(): m for m in ("GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS")}

# How a response body travels to the client (bits of ``response_head``'s second result).
OUT_CHUNKED: Final = 1  # the router writes it chunked (the instance sent it chunked or until close)
EOF_DELIMITED: Final = 2  # the instance's body ends when its connection closes
CLOSE: Final = 4  # the client connection closes after this response


class RequestHead:
    """A client's request head: as received, and as it will be forwarded."""

    __slots__ = (
        "chunked_in",
        "client_key_line",
        "connection_header",
        "content_length",
        "expect_continue",
        "forward_lines",
        "header_map",
        "method",
        "method_str",
        "path",
        "query",
        "request_id",
        "target",
        "upgrade",
        "xff",
        "xfh",
    )

    def __init__(
        self, method: bytes, url: bytes, headers: list[tuple[bytes, bytes]], upgrade: bool
    ) -> None:
        """One pass over the head: what to forward, what to note. The target becomes
        origin-form (an absolute-form URL is cut to its path and query)."""
        self.method = method
        self.upgrade = upgrade
        self.request_id = ""  # the client's X-Request-Id when valid
        self.query = ""
        self.client_key_line = b""
        self.xff = b""
        self.xfh = b""
        self.content_length: int | None = None
        self.chunked_in = False
        self.expect_continue = False
        self.connection_header = False
        self.method_str = _METHODS.get(method) or method.decode("latin-1")
        if url[:1] != b"/" and url != b"*":
            try:
                parsed = httptools.parse_url(url)
                # None when absent, though the stubs say bytes: read untyped, or the
                # compiled build would check them as bytes.
                path: bytes | None = getattr(parsed, "path")  # noqa: B009
                query: bytes | None = getattr(parsed, "query")  # noqa: B009
                url = (path or b"/") + (b"?" + query if query else b"")
            except httptools.HttpParserInvalidURLError:
                url = b""
        self.target = url
        q = url.find(b"?")
        if q >= 0:
            self.path = url[:q].decode("latin-1")
            self.query = url[q + 1 :].decode("latin-1")
        else:
            self.path = url.decode("latin-1")
        lines: list[bytes] = []
        hmap: dict[str, str] = {}
        self.forward_lines = lines
        self.header_map = hmap
        for name, value in headers:
            low = name.lower()
            if low in REQUEST_DROP:
                if low == b"host":
                    self.xfh = value
                elif low == b"content-length":
                    self.content_length = int(value)
                    hmap["content-length"] = value.decode("latin-1")
                elif low == b"transfer-encoding":
                    self.chunked_in = True
                    hmap["transfer-encoding"] = value.decode("latin-1")
                elif low == b"x-request-id":
                    if valid_request_id(value):
                        self.request_id = value.decode()
                elif low == b"x-forwarded-for":
                    self.xff = value + b", "
                elif low == b"expect":
                    self.expect_continue = value.lower() == b"100-continue"
                elif low == b"upgrade" and upgrade:
                    lines += [b"Connection: Upgrade\r\nUpgrade: ", value, CRLF]
                elif low == b"connection":
                    self.connection_header = True
                continue
            hmap[low.decode("latin-1")] = value.decode("latin-1")
            if low == b"x-api-key" or low == b"apikey":
                # Instance credentials: replaced by the instance's own api_key when it has
                # one, dropped when they are the router's own key (listen.api_keys).
                self.client_key_line += name + b": " + value + CRLF
                continue
            lines += [name, b": ", value, CRLF]

    def has_body(self) -> bool:
        return self.chunked_in or bool(self.content_length)

    def serialize(
        self,
        base_path: str,
        host_line: bytes,
        api_key_line: bytes,
        peer: bytes,
        body: list[bytes],
        complete: bool,
    ) -> bytes:
        """The request as an instance gets it: its ``base_path`` before the target, its
        ``Host``, its own key (else the client's), X-Forwarded-*, X-Request-Id, and the
        body read so far (re-chunked if it came chunked; the last chunk if ``complete``)."""
        parts = [
            self.method,
            b" ",
            base_path.encode() + self.target if base_path else self.target,
            b" HTTP/1.1\r\n",
            host_line,
            *self.forward_lines,
            b"X-Forwarded-For: ",
            self.xff,
            peer,
            b"\r\nX-Forwarded-Proto: http\r\nX-Request-Id: ",
            self.request_id.encode(),
            CRLF,
            api_key_line or self.client_key_line,
        ]
        if self.xfh:
            parts += [b"X-Forwarded-Host: ", self.xfh, CRLF]
        chunked = self.chunked_in
        if chunked:
            parts.append(b"Transfer-Encoding: chunked\r\n")
        elif self.content_length is not None:
            parts.append(b"Content-Length: %d\r\n" % self.content_length)
        parts.append(CRLF)
        if body:
            if chunked:
                for data in body:
                    parts += [b"%x\r\n" % len(data), data, CRLF]
            else:
                parts += body
        if complete and chunked:
            parts.append(LAST_CHUNK)
        return b"".join(parts)


def chunk(data: bytes) -> list[bytes]:
    """``data`` as one chunk of a chunked body."""
    return [b"%x\r\n" % len(data), data, CRLF]


# A header line the router never passes on (``RESPONSE_DROP``), found in the lowercased
# raw head: the CRLF before it, its name, the colon (llhttp allows no space before it).
_DROPPED: Final = re.compile(rb"\r\n(" + b"|".join(sorted(RESPONSE_DROP)) + rb"):").search


def response_head(
    head: bytes,
    status: int,
    body: bool,
    http11: bool,
    close: bool,
    instance: bytes,
    request_id: bytes,
) -> tuple[bytes, int]:
    """The client's response head for an instance's, and how its body travels (bits
    ``OUT_CHUNKED``, ``EOF_DELIMITED``, ``CLOSE``).

    ``head``: the instance's head as llhttp accepted it (status line to the empty line);
    its lines are copied as they are, but for the hop-by-hop ones and the router's own,
    found with one scan. ``body``: the response has a body (not HEAD, 204, 304, 101);
    ``http11``: the client speaks HTTP/1.1; ``close``: the client connection must close
    after it (the client asked, or request body bytes are still unread). A 101 keeps its
    ``Upgrade`` and ``Connection`` headers and gets no framing."""
    eol = head.find(CRLF)
    if eol > 13 and head.startswith(b"HTTP/1.1 ") and head[eol - 1] != 32:
        parts = []  # "HTTP/1.1 200 OK": the status line is kept as it is
        start = 0
    else:  # another version, or no reason phrase: the router's status line
        phrase = head[13:eol].strip() if eol > 13 else b""
        parts = [b"HTTP/1.1 %d %s" % (status, phrase or reason(status))]
        start = eol
    low = head.lower()
    length: bytes | None = None
    chunked = False
    m = _DROPPED(low, eol)
    while m is not None:
        name = m.group(1)
        end = low.find(CRLF, m.end())
        if status != 101 or (name != b"upgrade" and name != b"connection"):
            if name == b"content-length":
                length = head[m.end() : end].strip()
            elif name == b"transfer-encoding":
                chunked = True
            parts.append(head[start : m.start()])
            start = end
        m = _DROPPED(low, end)
    parts += (head[start:-2], b"X-Router-Instance: ", instance, b"\r\nX-Request-Id: ",
              request_id, CRLF)
    flags = 0
    if status != 101:
        if not body:
            if length is not None:
                parts += (b"Content-Length: ", length, CRLF)
        elif length is not None and not chunked:
            parts += (b"Content-Length: ", length, CRLF)
        elif http11:
            parts.append(b"Transfer-Encoding: chunked\r\n")
            flags = OUT_CHUNKED if chunked else OUT_CHUNKED | EOF_DELIMITED
        else:
            close = True
            flags = 0 if chunked else EOF_DELIMITED
        if close:
            flags |= CLOSE
            parts.append(b"Connection: close\r\n")
        elif not http11:
            parts.append(b"Connection: keep-alive\r\n")
    parts.append(CRLF)
    return b"".join(parts), flags
