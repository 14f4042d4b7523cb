"""The live dashboard in a real headless Chromium, against ``wa-router demo``: it lists the
instances, shows a killed simulator down within 5 s, and its drain button (with the demo's
admin token) drains an instance. Screenshots go to a temp dir (``$WA_ROUTER_ARTIFACTS``, or
``<tmp>/wa-router-artifacts``), never into the repository."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cdp import Browser, chromium_path
from tests.procs import PY, ROOT, free_port
from tests.test_cli import _consecutive_free_ports
from tests.test_multi_router import children

pytestmark = [
    pytest.mark.system,
    pytest.mark.skipif(
        chromium_path() is None,
        reason="no chromium binary (Debian package `chromium`; .ci/run installs it)",
    ),
]

ROWS = "[...document.querySelectorAll('#instances tbody tr')]"


def artifacts() -> Path:
    out = Path(os.environ.get("WA_ROUTER_ARTIFACTS") or Path(tempfile.gettempdir()) / "wa-router-artifacts")
    out.mkdir(parents=True, exist_ok=True)
    return out


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str, str]]:
    port, admin, sims = free_port(), free_port(), _consecutive_free_ports(3)
    log = tmp_path / "demo.log"
    proc = subprocess.Popen(
        [PY, "-m", "router", "demo", "--port", str(port), "--admin-port", str(admin),
         "--sim-port", str(sims)],
        stdout=log.open("wb"), stderr=subprocess.STDOUT, cwd=ROOT,
    )
    try:
        deadline = time.monotonic() + 60
        while "wa-router demo is running" not in log.read_text():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        m = re.search(r"dashboard:\s+(\S+)", log.read_text())
        assert m, log.read_text()
        yield proc, m.group(1), log.read_text()
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def post_json(url: str, body: object) -> dict[str, Any]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 202
        data: dict[str, Any] = json.loads(resp.read())
        return data


def sim_pid(demo_pid: int, name: str) -> int:
    for pid in children(demo_pid):
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        if b"sim" in cmd and name.encode() in cmd:
            return pid
    raise AssertionError(f"no simulator {name} under the demo")


def instance_states(admin: str, token: str) -> dict[str, str]:
    req = urllib.request.Request(admin + "/admin/instances", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req) as r:
        return {i["name"]: i["state"] for i in json.load(r)}


def state_of(name: str) -> str:
    return f"({ROWS}.find(r => r.dataset.name === {json.dumps(name)})?.querySelector('td.state')?.textContent || '')"


@pytest.mark.timeout(150)
async def test_dashboard_shows_the_fleet_live_and_drains(
    demo: tuple[subprocess.Popen[bytes], str, str], tmp_path: Path
) -> None:
    proc, url, banner = demo
    assert url.startswith("http://127.0.0.1:") and "/dashboard#token=" in url
    admin, token = url.split("/dashboard#token=")
    shots = artifacts()
    browser = Browser(tmp_path / "chromium-profile")
    await browser.start()
    try:
        await browser.goto(url)
        await browser.wait_for(f"{ROWS}.length === 3", 15, "three instance rows")
        names = await browser.evaluate(f"{ROWS}.map(r => r.dataset.name)")
        assert names == ["node-1", "node-2", "node-3"]
        assert await browser.evaluate("location.hash") == ""  # the token left the address bar
        await browser.wait_for("document.querySelectorAll('#sessions tbody tr').length > 0", 15,
                               "the sessions table")
        # Search narrows the sessions table (server-side, paged).
        await browser.evaluate("(() => { const s = document.getElementById('search'); "
                               "s.value = 'shop-0'; s.dispatchEvent(new Event('input')); })()")
        await browser.wait_for(
            "[...document.querySelectorAll('#sessions tbody tr')].every(r => r.dataset.session.startsWith('shop-0'))"
            " && document.querySelectorAll('#sessions tbody tr').length === 9", 10, "search results")
        await browser.screenshot(shots / "dashboard-1-fleet.png")

        os.kill(sim_pid(proc.pid, "node-2"), signal.SIGKILL)
        took = await browser.wait_for(f"{state_of('node-2')}.includes('down')", 5, "node-2 shown down")
        print(f"\nkilled node-2: shown down on the page after {took:.2f}s")
        await browser.screenshot(shots / "dashboard-2-node-down.png")

        await browser.evaluate(
            "document.querySelector('button[data-action=drain][data-name=\"node-1\"]').click()")
        await browser.wait_for(f"{state_of('node-1')}.startsWith('draining')", 10, "node-1 draining")
        states = await asyncio.to_thread(instance_states, admin, token)
        assert states["node-1"] == "draining"
        await browser.screenshot(shots / "dashboard-3-drained.png")

        # A campaign queued through the proxy port shows with its progress; pause it there.
        proxy = re.search(r"proxy:\s+(\S+)", banner)
        assert proxy
        body = {"name": "dash-campaign", "messages": [
            {"path": "/api/sendText", "body": {"session": "carol", "chatId": "1@c.us", "text": f"t{i}"}}
            for i in range(20)]}
        created = await asyncio.to_thread(post_json, proxy.group(1) + "/outbox/campaigns", body)
        row = f"document.querySelector('#campaigns tr[data-campaign=\"{created['id']}\"]')"
        await browser.wait_for(f"{row} !== null", 15, "the campaign's row")
        await browser.evaluate(f"{row}.querySelector('button[data-verb=pause]').click()")
        await browser.wait_for(f"{row}.children[1].textContent === 'paused'", 10, "campaign paused")
        await browser.screenshot(shots / "dashboard-4-campaign-paused.png")
        print(f"screenshots: {shots}")
    finally:
        await browser.close()
    assert token not in banner.split("dashboard:")[0]  # printed once, in the URL line only
