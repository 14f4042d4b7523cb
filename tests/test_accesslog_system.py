"""The access log of a real router process: its lines, no secret in them, an outbox send's
line, and logrotate's rename + SIGUSR1 (one process, and ``listen.workers: 2`` where the
master passes the signal on)."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.procs import Proc, RouterProc, router_config
from tests.redis_server import RedisServer
from tests.test_multi_router import children

pytestmark = [pytest.mark.system, pytest.mark.timeout(120)]

SECRET = "router-key-S3CRET"
LISTEN = "listen: {host: 127.0.0.1, port: {port}}"


def access_config(sims: list[Proc], log: Path, extra: str = "") -> str:
    text = router_config(sims, extra=f"log: {{access: {{enabled: true, path: '{log}'}}}}\n"
                         + extra)
    return text.replace(LISTEN, LISTEN[:-1] + f", api_keys: ['{SECRET}']}}")


def entries(path: Path) -> list[dict[str, Any]]:
    """The file's lines, each one JSON (a torn line would fail here)."""
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().splitlines()]


async def until(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    try:
        async with asyncio.timeout(timeout):
            while not check():  # noqa: ASYNC110 - the state is another process's files
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


def ids_in(path: Path) -> set[str]:
    return {e["request_id"] for e in entries(path)}


async def test_lines_secrets_outbox_and_sigusr1(
    tmp_path: Path, sim_factory: Callable[..., Proc], router_factory: Callable[..., RouterProc],
) -> None:
    log = tmp_path / "access.log"
    sim = sim_factory("node-1")
    r = router_factory(access_config([sim], log, "outbox: {delay: {min: 0s, max: 0s}}\n"))
    key = {"X-Api-Key": SECRET}
    async with aiohttp.ClientSession(base_url=r.url) as http:
        async with http.post("/api/sessions", json={"name": "acc", "start": True},
                             headers=key | {"X-Request-Id": "create"}) as resp:
            assert resp.status == 201
        async with http.get(f"/api/sessions/acc?x-api-key={SECRET}&x=1",
                            headers={"X-Request-Id": "query-key"}) as resp:
            assert resp.status == 200
        async with http.get("/api/sessions/acc", headers={"X-Request-Id": "no-key"}) as resp:
            assert resp.status == 401
        send = {"session": "acc", "chatId": "1@c.us", "text": "hi"}
        for rid in ("keyed-1", "keyed-2"):
            async with http.post("/api/sendText", json=send, headers=key | {
                    "Idempotency-Key": "k-1", "X-Request-Id": rid}) as resp:
                assert resp.status == 201
        async with http.post("/outbox/api/sendText", json=send,
                             headers=key | {"X-Request-Id": "enqueue"}) as resp:
            assert resp.status == 202
            message_id = (await resp.json())["id"]

        def outbox_logged() -> bool:
            return any(e.get("message_id") == message_id for e in entries(log))

        await until(outbox_logged, "the outbox send's line")  # within a second's flush
        # (start_router's GET /healthz has a line too)
        by_id = {e["request_id"]: e for e in entries(log)
                 if not e.get("outbox") and e["path"] != "/healthz"}
        assert {k: (v["method"], v["path"], v["status"], v["session"], v["replayed"])
                for k, v in by_id.items()} == {
            "create": ("POST", "/api/sessions", 201, "acc", False),
            "query-key": ("GET", "/api/sessions/acc?x-api-key=***&x=1", 200, "acc", False),
            "no-key": ("GET", "/api/sessions/acc", 401, None, False),
            "keyed-1": ("POST", "/api/sendText", 201, "acc", False),
            "keyed-2": ("POST", "/api/sendText", 201, "acc", True),  # answered from the key
            "enqueue": ("POST", "/outbox/api/sendText", 202, None, False),
        }
        assert by_id["create"]["instance"] == "node-1" and by_id["create"]["client"] == "127.0.0.1"
        assert by_id["create"]["bytes"] > 0 and by_id["create"]["duration_ms"] >= 0
        [sent] = [e for e in entries(log) if e.get("outbox")]
        assert (sent["method"], sent["path"], sent["status"], sent["session"],
                sent["instance"], sent["client"]) == (
            "POST", "/api/sendText", 201, "acc", "node-1", None)
        assert SECRET not in log.read_text()

        # logrotate: rename, then SIGUSR1; the next lines go to a new file at the path.
        log.rename(tmp_path / "access.log.1")
        r.proc.send_signal(signal.SIGUSR1)
        await until(log.exists, "the access log reopened at its path")
        for i in range(5):
            async with http.get("/api/sessions/acc", headers=key | {"X-Request-Id": f"new-{i}"}
                                ) as resp:
                assert resp.status == 200
        await until(lambda: ids_in(log) >= {f"new-{i}" for i in range(5)}, "lines in the new file")
        assert not ids_in(tmp_path / "access.log.1") & {f"new-{i}" for i in range(5)}
    assert r.proc.poll() is None


def catches_sigusr1(pid: int) -> bool:
    """Has ``pid`` installed its SIGUSR1 handler (``SigCgt`` in /proc)?"""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    caught = next(line for line in status.splitlines() if line.startswith("SigCgt:"))
    return bool(int(caught.split()[1], 16) & 1 << (signal.SIGUSR1 - 1))


async def test_workers_reopen_on_the_masters_sigusr1(
    tmp_path: Path, three_sims: list[Proc], redis_server: RedisServer,
    router_factory: Callable[..., RouterProc],
) -> None:
    log = tmp_path / "access.log"
    text = access_config(three_sims, log, f"store: {{url: '{redis_server.url}', prefix: 'al:'}}\n")
    r = router_factory(text.replace(", api_keys:", ", workers: 2, api_keys:"))
    master = r.proc.pid
    await until(lambda: len(children(master)) == 2 and all(map(catches_sigusr1, children(master))),
                "two workers ready for SIGUSR1")
    log.touch()  # a worker may not have written yet
    log.rename(tmp_path / "access.log.1")
    r.proc.send_signal(signal.SIGUSR1)
    await until(lambda: r.output().count("reopened") == 2, "both workers reopening")
    assert r.proc.poll() is None and "exited with" not in r.output()
    ids = {f"w-{i}" for i in range(40)}
    for rid in sorted(ids):  # a new connection each: the kernel spreads them over the workers
        async with (aiohttp.ClientSession() as http,
                    http.get(r.url + "/ping", headers={"X-Api-Key": SECRET,
                                                       "X-Request-Id": rid}) as resp):
            assert resp.status == 200
    await until(lambda: ids_in(log) >= ids, "every request's line in the new file")
    assert not ids_in(tmp_path / "access.log.1") & ids
