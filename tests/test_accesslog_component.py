"""The access log in the app (create_app, fake instances, manual clock): one line per outbox
send (retries included), SIGUSR1's reopen, and ``log.access`` changed by a reload."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from router.config import ConfigError
from tests.test_component import make_world
from tests.test_outbox_component import enqueue, sent

pytestmark = pytest.mark.component


def access(path: Path, fmt: str = "json") -> str:
    return (f"log: {{access: {{enabled: true, format: {fmt}, path: '{path}'}}}}\n"
            "outbox: {delay: {min: 0s, max: 0s}, retries: {policy: constant, delay: 1s, "
            "max_delay: 1s, attempts: 3, jitter: 0}}\n")


async def test_outbox_sends_logged_and_a_reload_applies(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    w = await make_world(extra=access(log))
    app = w.app
    try:
        first = app.access
        assert first is not None and app.proxy.access is first and app.dispatcher.access is first
        where = await w.place(["s"])
        w.fakes[where["s"]].fail_sends = 1  # one 500, then sent
        m = await enqueue(w, "s", "hello")
        await w.clock.run_until(lambda: sent(w.fakes) == ["hello"], limit=30)
        first.flush()
        lines = [json.loads(x) for x in log.read_text().splitlines()]
        assert [(x["status"], x["message_id"], x["session"], x["instance"], x["outbox"])
                for x in lines] == [(500, m["id"], "s", where["s"], True),
                                    (201, m["id"], "s", where["s"], True)]
        assert lines[0]["error"] == "instance answered 500" and lines[1]["error"] is None

        log.rename(tmp_path / "access.log.1")
        app.reopen_logs()  # what SIGUSR1 does
        assert log.exists()

        # A reload that changes log.access applies: a new writer everywhere, the old closed.
        other = tmp_path / "other.log"
        await app.reload(w.config(extra=access(other, "combined")))
        second = app.access
        assert second is not None and second is not first
        assert app.proxy.access is second and app.dispatcher.access is second
        assert second.config.format == "combined" and other.exists()
        # A path that cannot be opened: refused whole, the running log kept.
        with pytest.raises(ConfigError, match=r"log\.access\.path"):
            await app.reload(w.config(extra=access(tmp_path / "no" / "such.log")))
        assert app.access is second
        await app.reload(w.config(extra="outbox: {delay: {min: 0s, max: 0s}}\n"))  # off
        assert app.access is None and app.proxy.access is None and app.dispatcher.access is None
    finally:
        await app.stop()
    assert app.access is None
