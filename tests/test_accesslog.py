"""The access log: secret stripping, both formats, sampling, the writer (buffer, flush,
reopen) and the exchange's hook, in-process."""

from __future__ import annotations

import asyncio
import json
import os
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from router import accesslog
from router.accesslog import AccessLog, clean_target, open_log
from router.config.model import AccessLogConfig
from router.outbox.model import Message, Request
from tests.test_proxy_exchange import GET, OK_2, Rig

pytestmark = pytest.mark.unit

SECRET = "s3cr3t-VALUE"

CLEAN_ROWS = [
    ("/api/x", "", "/api/x"),
    ("/api/x", "session=alice&limit=5", "/api/x?session=alice&limit=5"),
    ("/api/x", f"x-api-key={SECRET}", "/api/x?x-api-key=***"),
    ("/api/x", f"session=a&X-Api-Key={SECRET}&b=2", "/api/x?session=a&X-Api-Key=***&b=2"),
    ("/api/x", f"apikey={SECRET}&api_key={SECRET}", "/api/x?apikey=***&api_key=***"),
    ("/api/x", f"token={SECRET}&access_token={SECRET}", "/api/x?token=***&access_token=***"),
    ("/api/x", f"key={SECRET}&password={SECRET}&secret={SECRET}",
     "/api/x?key=***&password=***&secret=***"),
    ("/api/x", f"x%2Dapi%2Dkey={SECRET}", "/api/x?x%2Dapi%2Dkey=***"),  # encoded name
    ("/api/x", f"%74oken={SECRET}", "/api/x?%74oken=***"),
    ("/api/x", "token", "/api/x?token"),  # no value: nothing to hide
    ("/api/x", f"token=&a={SECRET}", "/api/x?token=***&a=" + SECRET),  # only secret names
    ("/api/x", "q=monkey", "/api/x?q=monkey"),  # a value containing a word: left alone
]


@pytest.mark.parametrize(("path", "query", "want"), CLEAN_ROWS)
def test_clean_target(path: str, query: str, want: str) -> None:
    assert clean_target(path, query) == want


def exchange(**kw: Any) -> Any:
    """What the access log reads of an ``Exchange``."""
    inst = kw.pop("instance", "waha-1")
    base: dict[str, Any] = dict(
        conn=SimpleNamespace(peer=b"10.0.0.7", client="10.0.0.7"), started=0.0, method=b"GET",
        method_str="GET", path="/api/x", query="",
        status=200, bytes_out=2, request_id="rid-1", session="alice",
        instance=SimpleNamespace(name=inst) if inst is not None else None,
        replayed=False, header_map={}, http11=True,
    )
    base.update(kw)
    return SimpleNamespace(**base)


def config(tmp: Path, **kw: Any) -> AccessLogConfig:
    return AccessLogConfig(**{"enabled": True, "path": str(tmp / "access.log"), **kw})


def lines_of(tmp: Path) -> list[str]:
    return (tmp / "access.log").read_text().splitlines()


# (name, exchange fields, seconds, fields expected in the JSON line)
JSON_ROWS: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("proxied", {}, {"client": "10.0.0.7", "method": "GET", "path": "/api/x", "status": 200,
                     "bytes": 2, "request_id": "rid-1", "session": "alice",
                     "instance": "waha-1", "replayed": False}),
    ("no session, no instance, no id",
     {"session": None, "instance": None, "request_id": "", "status": 404},
     {"session": None, "instance": None, "request_id": None, "status": 404}),
    ("a secret in the query", {"query": f"x-api-key={SECRET}&chatId=1"},
     {"path": "/api/x?x-api-key=***&chatId=1"}),
    ("replayed", {"method": b"POST", "method_str": "POST", "replayed": True},
     {"method": "POST", "replayed": True}),
    ("quotes and bytes > 127 in the path", {"path": '/a"b\\c\xe9'}, {"path": '/a"b\\c\xe9'}),
    ("a client request id that needs escaping", {"request_id": 'a"b\\'},
     {"request_id": 'a"b\\'}),
]


@pytest.mark.parametrize(("fields", "want"), [r[1:] for r in JSON_ROWS],
                         ids=[r[0] for r in JSON_ROWS])
def test_json_lines(tmp_path: Path, fields: dict[str, Any], want: dict[str, Any]) -> None:
    log = AccessLog(config(tmp_path))
    ex = exchange(**fields)
    log.request(ex, 0.0123456, ex.status)
    log.close()
    [line] = lines_of(tmp_path)
    assert line.isascii()
    got = json.loads(line)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", got["time"])
    assert got["duration_ms"] == 12.346
    assert {k: got[k] for k in want} == want
    assert SECRET not in line


COMBINED_ROWS = [
    ("proxied", {},
     r'10\.0\.0\.7 - - \[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d \+0000\] "GET /api/x HTTP/1\.1" 200 2 '
     r'"-" "-" duration_ms=12\.346 request_id=rid-1 session=alice instance=waha-1 '
     r"replayed=false"),
    ("secrets, referer, agent, HTTP/1.0",
     {"query": f"token={SECRET}", "http11": False, "request_id": "", "session": None,
      "instance": None, "status": 401, "bytes_out": 90, "replayed": True,
      "header_map": {"referer": f"http://x/y?apikey={SECRET}", "user-agent": 'curl "8"',
                     "x-api-key": SECRET}},
     r'10\.0\.0\.7 - - \[.*\] "GET /api/x\?token=\*\*\* HTTP/1\.0" 401 90 '
     r'"http://x/y\?apikey=\*\*\*" "curl \\"8\\"" duration_ms=12\.346 request_id=- '
     r"session=- instance=- replayed=true"),
    ("a value with a space is quoted", {"session": "a b"}, r'.* session="a b" instance=.*'),
]


@pytest.mark.parametrize(("fields", "pattern"), [r[1:] for r in COMBINED_ROWS],
                         ids=[r[0] for r in COMBINED_ROWS])
def test_combined_lines(tmp_path: Path, fields: dict[str, Any], pattern: str) -> None:
    log = AccessLog(config(tmp_path, format="combined"))
    ex = exchange(**fields)
    log.request(ex, 0.0123456, ex.status)
    log.close()
    [line] = lines_of(tmp_path)
    assert re.fullmatch(pattern, line), line
    assert SECRET not in line


def message(query: str = "") -> Message:
    req = Request("POST", "/api/sendText", query, b'{"text":"hi"}', "application/json", "rid-9")
    return Message("msg_1", "alice", req, 0.0, 1)


@pytest.mark.parametrize(("status", "error"), [(201, None), (None, "connection refused"),
                                               (500, "instance answered 500")])
def test_outbox_lines(tmp_path: Path, status: int | None, error: str | None) -> None:
    log = AccessLog(config(tmp_path))
    log.outbox(message(f"token={SECRET}"), "waha-2", status, error, 0.5)
    log.close()
    log = AccessLog(config(tmp_path, format="combined"))
    log.outbox(message(), "waha-2", status, error, 0.5)
    log.close()
    first, second = lines_of(tmp_path)
    got = json.loads(first)
    assert got | {"time": None} == {
        "time": None, "client": None, "method": "POST", "path": "/api/sendText?token=***",
        "status": status, "bytes": 13, "duration_ms": 500.0, "request_id": "rid-9",
        "session": "alice", "instance": "waha-2", "replayed": False, "outbox": True,
        "message_id": "msg_1", "error": error,
    }
    assert second.startswith("- - - [") and "outbox=true message_id=msg_1" in second
    assert f'"POST /api/sendText HTTP/1.1" {status or "-"} 13 ' in second
    assert (f'error="{error}"' in second) == (error is not None)
    assert SECRET not in first + second


# (sample, what the random draw returns, status, written?)
SAMPLE_ROWS = [
    (1.0, 0.99, 200, True),
    (0.0, 0.0, 200, False),
    (0.0, 0.0, 404, True),  # errors always
    (0.0, 0.0, 502, True),
    (0.25, 0.2, 200, True),
    (0.25, 0.3, 200, False),
    (0.25, 0.3, 499, True),
]


@pytest.mark.parametrize(("sample", "draw", "status", "written"), SAMPLE_ROWS)
def test_sampling(tmp_path: Path, sample: float, draw: float, status: int, written: bool) -> None:
    log = AccessLog(config(tmp_path, sample=sample), rand=lambda: draw)
    log.request(exchange(), 0.001, status)
    log.outbox(message(), "waha-1", status, None, 0.001)
    log.close()
    assert len(lines_of(tmp_path)) == (2 if written else 0)


def test_sampling_draws_only_when_sampling(tmp_path: Path) -> None:
    draws: list[int] = []

    def rand() -> float:
        draws.append(1)
        return 0.0

    log = AccessLog(config(tmp_path), rand=rand)
    log.request(exchange(), 0.001, 200)
    log.close()
    assert draws == []


def test_off_is_none(tmp_path: Path) -> None:
    assert open_log(AccessLogConfig()) is None
    assert isinstance(open_log(config(tmp_path)), AccessLog)


async def test_buffered_until_large_or_a_tick(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(accesslog, "FLUSH_EVERY", 0.05)
    log = AccessLog(config(tmp_path))
    log.request(exchange(), 0.001, 200)
    assert lines_of(tmp_path) == []  # buffered
    async with asyncio.timeout(5):
        while not lines_of(tmp_path):  # noqa: ASYNC110 - the timer's write, seen in the file
            await asyncio.sleep(0.01)
    many = accesslog.FLUSH_LINES + 10
    for _ in range(many):
        log.request(exchange(), 0.001, 200)
    assert len(lines_of(tmp_path)) == 1 + accesslog.FLUSH_LINES  # one write when it filled
    log.close()
    assert len(lines_of(tmp_path)) == many + 1
    log.request(exchange(), 0.001, 200)  # after close: dropped, no error
    log.flush()
    assert len(lines_of(tmp_path)) == many + 1


def test_reopen_after_rename(tmp_path: Path) -> None:
    log = AccessLog(config(tmp_path))
    log.request(exchange(request_id="before"), 0.001, 200)
    os.rename(tmp_path / "access.log", tmp_path / "access.log.1")
    log.request(exchange(request_id="buffered"), 0.001, 200)  # written before the reopen
    log.reopen()
    log.request(exchange(request_id="after"), 0.001, 200)
    log.close()
    old = (tmp_path / "access.log.1").read_text()
    assert '"before"' in old and '"buffered"' in old and '"after"' not in old
    assert [json.loads(x)["request_id"] for x in lines_of(tmp_path)] == ["after"]


def test_reopen_failure_keeps_the_old_file(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    log = AccessLog(AccessLogConfig(enabled=True, path=str(tmp_path / "d" / "access.log")))
    (tmp_path / "d").rename(tmp_path / "e")  # the directory is gone: the open fails
    log.reopen()
    log.request(exchange(), 0.001, 200)
    log.close()
    assert len((tmp_path / "e" / "access.log").read_text().splitlines()) == 1


def test_stderr(capfd: pytest.CaptureFixture[str]) -> None:
    log = AccessLog(AccessLogConfig(enabled=True, path="-"))
    log.request(exchange(), 0.001, 200)
    log.reopen()  # nothing to reopen
    log.close()
    assert json.loads(capfd.readouterr().err)["request_id"] == "rid-1"


# -- the exchange's hook, in-process (tests/test_proxy_exchange.py's rig) ----------------------


def rig_with_log(tmp_path: Path) -> tuple[Rig, AccessLog]:
    rig = Rig()
    log = AccessLog(config(tmp_path))
    rig.server.access = log
    return rig, log


async def test_exchange_logs_one_line_per_request(tmp_path: Path) -> None:
    rig, log = rig_with_log(tmp_path)
    up = rig.pooled()
    rig.conn.data_received(GET.replace(b"/api/x", b"/api/x?x-api-key=" + SECRET.encode()))
    up.data_received(OK_2)
    rig.conn.data_received(b"GET /nowhere HTTP/1.1\r\nX-Session-Id: ../x\r\n\r\n")  # 400
    rig.conn.data_received(b"HEAD /healthz HTTP/1.1\r\n\r\n")
    log.close()
    lines = lines_of(tmp_path)
    assert SECRET not in "".join(lines)
    got = [json.loads(x) for x in lines]
    assert [(g["method"], g["path"], g["status"], g["session"], g["instance"]) for g in got] == [
        ("GET", "/api/x?x-api-key=***", 200, "alice", "waha-1"),
        ("GET", "/nowhere", 400, None, None),
        ("HEAD", "/healthz", 200, None, None),
    ]
    assert [g["bytes"] for g in got][::2] == [2, 0]
    assert got[1]["bytes"] > 0 and got[1]["request_id"]  # the error's body and its id
    assert got[0]["client"] == "10.0.0.7" and got[0]["request_id"] == "rid-1"


async def test_exchange_cut_or_abandoned_logs_once(tmp_path: Path) -> None:
    rig, log = rig_with_log(tmp_path)
    up = rig.pooled()
    rig.conn.data_received(GET)
    up.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    up.connection_lost(None)  # the response is cut: the client connection is aborted
    rig.conn.connection_lost(None)
    # A client that goes away while its request waits for its session: nginx's 499.
    rig2 = Rig()
    rig2.server.access = log
    rig2.conn.data_received(GET.replace(b"alice", b"bob"))
    await asyncio.sleep(0)
    rig2.conn.connection_lost(None)
    log.close()
    got = [json.loads(x) for x in lines_of(tmp_path)]
    assert [(g["status"], g["bytes"], g["session"]) for g in got] == [(200, 3, "alice"),
                                                                      (499, 0, "bob")]
