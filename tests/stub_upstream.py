"""A misbehaving instance for the hardening tests, run as its own process:

    python tests/stub_upstream.py PORT

By path: ``/ping`` 200 (so health checks pass); ``*never*`` reads the request and never
answers; ``*garbage*`` answers bytes that are not HTTP; ``*midbody*`` promises 100,000 bytes,
sends 10 and closes; ``*endless*`` streams chunks until the peer goes away; ``/stub/stats``
counts open connections; anything else echoes the request it received as JSON (method,
target, headers), so a test sees exactly what the router forwarded.
"""

from __future__ import annotations

import asyncio
import json
import sys

import httptools

OPEN: set[asyncio.Transport] = set()


class Stub(asyncio.Protocol):
    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.headers: list[tuple[str, str]] = []
        self.streaming: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        OPEN.add(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            OPEN.discard(self.transport)
        if self.streaming is not None:
            self.streaming.cancel()

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.close()

    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_message_complete(self) -> None:
        t = self.transport
        assert t is not None
        path = self.url.decode("latin-1")
        if path == "/ping":
            self._send(200, b'{"ok":true}')
        elif path == "/stub/stats":
            self._send(200, json.dumps({"open": len(OPEN) - 1}).encode())
        elif "never" in path:
            pass
        elif "garbage" in path:
            t.write(b"THIS IS NOT HTTP\r\n\r\n")
            t.close()
        elif "midbody" in path:
            t.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n0123456789")
            t.close()
        elif "endless" in path:
            t.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            self.streaming = asyncio.get_running_loop().create_task(self._stream(t))
        else:
            body = {"method": self.parser.get_method().decode(), "target": path,
                    "headers": self.headers}
            self._send(200, json.dumps(body).encode())

    async def _stream(self, t: asyncio.Transport) -> None:
        chunk = b"%x\r\n" % 65536 + b"x" * 65536 + b"\r\n"
        while not t.is_closing():
            t.write(chunk)
            while t.get_write_buffer_size() > 1 << 20:  # backpressure: wait for the reader
                await asyncio.sleep(0.01)
                if t.is_closing():
                    return
            await asyncio.sleep(0)

    def _send(self, status: int, body: bytes) -> None:
        assert self.transport is not None
        self.transport.write(
            b"HTTP/1.1 %d OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
            % (status, len(body)) + body
        )


async def main(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(Stub, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
