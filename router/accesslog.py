"""The access log (``log.access``): one line per proxied request and per outbox send, as
nginx and HAProxy write theirs, as JSON or as nginx's ``combined`` plus ``key=value`` pairs.

The data path pays one ``is not None`` check when it is off. When on, a JSON line is one
bytes %-format (no dict, no ``json.dumps``, no text encoding) appended to a buffer that is
written with one ``os.write`` when it is large, at least once a second, and on close;
SIGUSR1 reopens the file (logrotate: rename, then signal). Secrets never reach it: no
request header is logged but Referer and User-Agent (``combined``), and secret-looking
query values become ``***``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import re
import time
from collections.abc import Callable
from json.encoder import encode_basestring_ascii as _esc
from typing import TYPE_CHECKING
from urllib.parse import unquote_plus

from router.config.model import AccessLogConfig

if TYPE_CHECKING:
    from router.outbox.model import Message
    from router.proxy.exchange import Exchange

log = logging.getLogger("wa_router.access")
_now = time.time

FLUSH_LINES = 256  # lines buffered before a write (~64 KiB)
FLUSH_EVERY = 1.0  # seconds a line may wait in the buffer
QUOTED_CACHE = 10_000  # paths, sessions and instance names kept JSON-quoted
MASK = "***"
# A query parameter whose name (lowercased, decoded) contains one of these has its value
# masked: x-api-key, apikey, api_key, key, token, access_token, password, secret, ...
SECRET_WORDS = ("key", "token", "password", "passwd", "secret", "auth", "signature")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_PLAIN = re.compile(r"[!#-\[\]-~]+").fullmatch  # printable ASCII, no space, quote or backslash

# Bytes: the client address and the method are bytes already, and nothing is encoded.
_JSON_REQUEST = (b'{"time":"%s.%03dZ","client":"%s","method":"%s","path":%s,"status":%d,'
                 b'"bytes":%d,"duration_ms":%.3f,"request_id":%s,"session":%s,"instance":%s,'
                 b'"replayed":%s}\n')
_JSON_OUTBOX = ('{"time":"%s.%03dZ","client":null,"method":"%s","path":%s,"status":%s,'
                '"bytes":%d,"duration_ms":%.3f,"request_id":%s,"session":%s,"instance":%s,'
                '"replayed":false,"outbox":true,"message_id":%s,"error":%s}\n')
_COMBINED = ('%s - - [%s] "%s %s %s" %s %d %s %s duration_ms=%.3f request_id=%s session=%s '
             'instance=%s %s\n')


def clean_target(path: str, query: str) -> str:
    """``path?query`` with the value of every secret-looking query parameter masked."""
    if not query:
        return path
    low = (unquote_plus(query) if "%" in query or "+" in query else query).lower()
    if not any(w in low for w in SECRET_WORDS):  # most queries: no split, no copy
        return f"{path}?{query}"
    parts = []
    for part in query.split("&"):
        name, eq, _ = part.partition("=")
        secret = eq and any(w in unquote_plus(name).lower() for w in SECRET_WORDS)
        parts.append(f"{name}={MASK}" if secret else part)
    return f"{path}?{'&'.join(parts)}"


def _clean_url(url: str) -> str:
    """A Referer, its query masked as a request's is."""
    path, _, query = url.partition("?")
    return clean_target(path, query)


def _json_opt(value: str | None) -> str:
    return _esc(value) if value else "null"


def _kv(value: str | None) -> str:
    """A ``key=value`` value: bare when plain, else JSON-quoted; ``-`` when absent."""
    if not value:
        return "-"
    return value if _PLAIN(value) else _esc(value)


def _quoted(value: str | None) -> str:
    return _esc(value) if value else '"-"'


# A proxied request's line, before it is formatted: now (the loop's clock), client,
# method, path, query, status, bytes, seconds, request id, session, instance, replayed.
_Row = tuple[float, bytes, bytes, str, str, int, int, float, str, str | None, str | None, bool]


def _loop_time() -> float:
    """The clock ``Exchange.started`` is read from (the event loop's)."""
    try:
        return asyncio.get_running_loop().time()
    except RuntimeError:  # no loop: a script's or a test's times are the monotonic clock's
        return time.monotonic()


def open_log(config: AccessLogConfig, *, rand: Callable[[], float] = random.random
             ) -> AccessLog | None:
    """The access log ``config`` asks for, or None when it is off (``OSError``: the file
    cannot be opened)."""
    return AccessLog(config, rand=rand) if config.enabled else None


class AccessLog:
    """One writer: a buffer and a file descriptor (stderr's for ``path: "-"``)."""

    __slots__ = ("_bstamp", "_chunks", "_failing", "_fd", "_json", "_offset", "_quoted",
                 "_rand", "_rows", "_sec", "_stamp", "_timer", "config", "sample")

    def __init__(self, config: AccessLogConfig, *, rand: Callable[[], float] = random.random
                 ) -> None:
        self.config = config
        self.sample = config.sample
        self._json = config.format == "json"
        self._rand = rand
        self._fd = self._open()
        self._chunks: list[bytes] = []  # lines, written together
        self._rows: list[_Row] = []  # proxied requests' values, formatted together
        self._timer: asyncio.TimerHandle | None = None
        self._failing = False
        self._sec = -1
        self._stamp = ""
        self._bstamp = b""
        self._offset = 0.0  # wall clock - loop clock, measured for each batch
        self._quoted: dict[str, bytes] = {}  # a string -> its JSON form (most repeat)

    def __repr__(self) -> str:
        return f"<AccessLog {self.config.format} {self.config.path} sample={self.sample:g}>"

    # -- lines -----------------------------------------------------------------------------

    def _time(self, wall: float) -> str:
        """The second's timestamp, made once a second (strftime costs more than a line)."""
        sec = int(wall)
        if sec != self._sec:
            t = time.gmtime(sec)
            self._sec = sec
            self._stamp = (
                time.strftime("%Y-%m-%dT%H:%M:%S", t) if self._json
                else f"{t.tm_mday:02d}/{_MONTHS[t.tm_mon - 1]}/{t.tm_year}:"
                     f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} +0000"
            )  # fmt: skip
            self._bstamp = self._stamp.encode()
        return self._stamp

    def _quote(self, value: str) -> bytes:
        """``value`` as a JSON string, kept for the next lines (bounded)."""
        cache = self._quoted
        if len(cache) >= QUOTED_CACHE:
            cache.clear()
        quoted = cache[value] = _esc(value).encode()
        return quoted

    def request(self, ex: Exchange, now: float, status: int) -> None:
        """A proxied request ended (``now``: the loop's time): answered in full
        (``finish``), cut, or abandoned (499)."""
        if status < 400 and self.sample < 1.0 and self._rand() >= self.sample:
            return
        if not self._json:
            self._combined(ex, now, status)
            return
        # The hot path: the values only; they are formatted a batch at a time (``_lines``),
        # which costs the proxy half as much as a line at a time (the formatting code and
        # its data stay in the CPU's caches for the whole batch).
        inst = ex.instance
        rows = self._rows
        rows.append((now, ex.conn.peer, ex.method, ex.path, ex.query, status, ex.bytes_out,
                     now - ex.started, ex.request_id, ex.session,
                     None if inst is None else inst.name, ex.replayed))
        if len(rows) >= FLUSH_LINES:
            self.flush()
        elif self._timer is None:
            self._arm()

    def _lines(self, rows: list[_Row]) -> None:
        """Format the buffered proxied requests' JSON lines. Escaping is needed (llhttp
        lets '"' and '\\' through in a path, a client's X-Request-Id may hold them), but
        paths, sessions and instance names repeat: their JSON form is looked up."""
        chunks, get, quote = self._chunks, self._quoted.get, self._quote
        # The wall clock from the loop's, which the exchange had read: one clock read a
        # batch (and a second) rather than one a line.
        self._offset = offset = _now() - _loop_time()
        for now, peer, method, path, q, status, size, took, rid, session, name, replayed in rows:
            wall = now + offset
            if int(wall) != self._sec:
                self._time(wall)
            chunks.append(_JSON_REQUEST % (
                self._bstamp, (wall % 1.0) * 1000, peer, method,
                _esc(clean_target(path, q)).encode() if q else get(path) or quote(path),
                status, size, took * 1e3, _esc(rid).encode() if rid else b"null",
                get(session) or quote(session) if session else b"null",
                b"null" if name is None else get(name) or quote(name),
                b"true" if replayed else b"false",
            ))  # fmt: skip
        rows.clear()

    def _combined(self, ex: Exchange, now: float, status: int) -> None:
        headers = ex.header_map
        referer = headers.get("referer")
        inst = ex.instance
        self.write((_COMBINED % (
            ex.conn.client or "-", self._time(_now()), ex.method_str,
            _esc(clean_target(ex.path, ex.query))[1:-1], "HTTP/1.1" if ex.http11 else "HTTP/1.0",
            status, ex.bytes_out, _quoted(_clean_url(referer) if referer else None),
            _quoted(headers.get("user-agent")), (now - ex.started) * 1e3, _kv(ex.request_id),
            _kv(ex.session), _kv(inst.name if inst is not None else None),
            "replayed=true" if ex.replayed else "replayed=false",
        )).encode())  # fmt: skip

    def outbox(self, m: Message, instance: str, status: int | None, error: str | None,
               seconds: float) -> None:
        """One outbox send (``status`` None: no answer; ``error`` says why). Its client is
        the router; ``bytes`` is the request body sent to the instance."""
        failed = status is None or status >= 400
        if not failed and self.sample < 1.0 and self._rand() >= self.sample:
            return
        wall = _now()
        req = m.request
        target = clean_target(req.path, req.query)
        if self._json:
            line = _JSON_OUTBOX % (
                self._time(wall), (wall % 1.0) * 1000, req.method, _esc(target),
                "null" if status is None else status, len(req.body), seconds * 1e3,
                _json_opt(req.request_id), _esc(m.session), _esc(instance), _esc(m.id),
                _json_opt(error),
            )  # fmt: skip
        else:
            line = _COMBINED % (
                "-", self._time(wall), req.method, _esc(target)[1:-1], "HTTP/1.1",
                "-" if status is None else status, len(req.body), '"-"', '"-"', seconds * 1e3,
                _kv(req.request_id), _kv(m.session), _kv(instance),
                f"replayed=false outbox=true message_id={_kv(m.id)}"
                + (f" error={_esc(error)}" if error else ""),
            )  # fmt: skip
        self.write(line.encode())

    # -- the writer ------------------------------------------------------------------------

    def write(self, line: bytes) -> None:
        """Buffer ``line`` (with its newline), after the proxied requests before it."""
        if self._rows:
            self._lines(self._rows)
        chunks = self._chunks
        chunks.append(line)
        if len(chunks) >= FLUSH_LINES:
            self.flush()
        elif self._timer is None:
            self._arm()

    def _arm(self) -> None:
        try:
            self._timer = asyncio.get_running_loop().call_later(FLUSH_EVERY, self._tick)
        except RuntimeError:  # no event loop (a script): write through
            self.flush()

    def _tick(self) -> None:
        self._timer = None
        self.flush()

    def flush(self) -> None:
        if self._rows:
            self._lines(self._rows)
        if not self._chunks:
            return
        data = b"".join(self._chunks)
        self._chunks.clear()
        if self._fd < 0:  # closed: a line after the shutdown (or a swap on reload) is dropped
            return
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view):]
        except OSError as e:  # a full disk: lines are dropped, said once until it recovers
            if not self._failing:
                log.error("access log %s: write failed, lines dropped: %s", self.config.path, e)
            self._failing = True
        else:
            self._failing = False

    def _open(self) -> int:
        if self.config.path == "-":
            return 2
        return os.open(self.config.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                       0o644)

    def reopen(self) -> None:
        """SIGUSR1: the buffered lines go to the old file, the next ones to a new file at
        ``path`` (the old one was renamed by logrotate)."""
        if self.config.path == "-" or self._fd < 0:
            return
        self.flush()
        try:
            fd = self._open()
        except OSError as e:  # keep writing to the old file rather than nowhere
            log.error("access log %s: cannot reopen, still writing the old file: %s",
                      self.config.path, e)
            return
        os.close(self._fd)
        self._fd = fd
        log.info("access log %s reopened", self.config.path)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.flush()
        if self._fd != 2:
            os.close(self._fd)
        self._fd = -1
