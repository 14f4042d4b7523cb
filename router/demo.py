"""``wa-router demo``: three simulated instances and a router on loopback, in memory."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import secrets
import signal
import sys

import aiohttp

from router.app import create_app
from router.config import parse_config

DEMO_CONFIG = """
listen: {{host: 127.0.0.1, port: {port}}}
admin: {{host: 127.0.0.1, port: {admin_port}, token: {token}}}
profile: waha
instances:
{instances}
health: {{interval: 500ms, timeout: 300ms}}
failover: {{grace: 3s, hold_timeout: 20s}}
"""

DEMO_SESSIONS = ("alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan")
EXTRA_SESSIONS = tuple(f"shop-{i:02d}" for i in range(1, 31))
TRAFFIC_RATE = 20.0  # requests/s the demo sends itself so the dashboard has something to show
TRAFFIC_MAX = 2_000_000  # and at most this many (about a day): a bounded loop


async def _traffic(base: str) -> None:
    """Loopback only: GETs for every session and a sendText now and then."""
    assert base.startswith("http://127.0.0.1:")
    names = [*DEMO_SESSIONS, *EXTRA_SESSIONS]
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        for n in range(TRAFFIC_MAX):
            s = random.choice(names)
            try:
                if n % 10 == 0:
                    body = {"session": s, "chatId": "4915100000000@c.us", "text": f"demo {n}"}
                    async with http.post(base + "/api/sendText", json=body) as r:
                        await r.read()
                else:
                    async with http.get(f"{base}/api/sessions/{s}") as r:
                        await r.read()
            except (aiohttp.ClientError, TimeoutError):
                pass  # an instance killed on purpose: the dashboard shows what happens
            await asyncio.sleep(random.expovariate(TRAFFIC_RATE))


async def _wait_ready(url: str, proc: asyncio.subprocess.Process, deadline: float) -> None:
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession() as http:
        while loop.time() < deadline:
            if proc.returncode is not None:
                raise RuntimeError(f"simulator at {url} exited with {proc.returncode}")
            try:
                async with http.get(url + "/ping", timeout=aiohttp.ClientTimeout(total=1)) as r:
                    if r.status == 200:
                        return
            except (aiohttp.ClientError, TimeoutError):
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError(f"simulator at {url} did not start")


async def _demo(port: int, admin_port: int, sim_base_port: int) -> None:
    names = [f"node-{i}" for i in (1, 2, 3)]
    sim_ports = [sim_base_port + i for i in range(3)]
    procs: list[asyncio.subprocess.Process] = []
    loop = asyncio.get_running_loop()
    try:
        for name, sp in zip(names, sim_ports, strict=True):
            procs.append(
                await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "router", "sim", "--host", "127.0.0.1",
                    "--port", str(sp), "--name", name, "--start-delay", "1",
                    # Instances post their webhooks to the router (it learns statuses).
                    "--webhook-url", f"http://127.0.0.1:{port}/webhooks",
                    stdout=asyncio.subprocess.DEVNULL,
                    env={**os.environ, "PYTHONUNBUFFERED": "1"},
                )
            )
        deadline = loop.time() + 20
        for sp, proc in zip(sim_ports, procs, strict=True):
            await _wait_ready(f"http://127.0.0.1:{sp}", proc, deadline)
        instances = "\n".join(
            f"  - {{name: {n}, url: 'http://127.0.0.1:{sp}', max_sessions: 50}}"
            for n, sp in zip(names, sim_ports, strict=True)
        )
        token = secrets.token_urlsafe(12)  # per run; only ever on loopback
        config = parse_config(
            DEMO_CONFIG.format(port=port, admin_port=admin_port, instances=instances, token=token),
            source="<demo>",
        )
        app = create_app(config)
        await app.start()
        base = f"http://127.0.0.1:{app.proxy_port}"
        async with aiohttp.ClientSession() as http:
            for s in (*DEMO_SESSIONS, *EXTRA_SESSIONS):
                async with http.post(base + "/api/sessions", json={"name": s, "start": True}) as r:
                    await r.read()
        admin = f"http://127.0.0.1:{app.admin_port}"
        print(_banner(base, admin, token, names, sim_ports), flush=True)
        traffic = asyncio.get_running_loop().create_task(_traffic(base))
        try:
            await app.run_until_signalled()
        finally:
            traffic.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await traffic
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 5)
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


def _banner(base: str, admin: str, token: str, names: list[str], ports: list[int]) -> str:
    sims = "\n".join(f"    {n}: http://127.0.0.1:{p}" for n, p in zip(names, ports, strict=True))
    json_h = "-H 'Content-Type: application/json'"
    return f"""
wa-router demo is running (in-memory store, loopback only)

  dashboard:  {admin}/dashboard#token={token}

  proxy:      {base}
  admin:      {admin}   (token {token}; GET /healthz, /readyz, /metrics)
  instances:
{sims}
  sessions created: {", ".join(DEMO_SESSIONS)}, shop-01 .. shop-30
  traffic: the demo sends itself ~{TRAFFIC_RATE:.0f} requests/s so the dashboard moves

Try:
  curl -s {base}/api/sessions                      # merged from all instances
  curl -si {base}/api/sessions/alice | grep -i x-router-instance
  curl -s -X POST {base}/api/sessions {json_h} -d '{{"name": "zoe"}}'
  curl -s -X POST {base}/api/sendText {json_h} -d '{{"session": "alice", "chatId": "123@c.us", "text": "hi"}}'
  curl -s '{base}/api/screenshot?session=bob' -o /dev/null -w '%{{http_code}}\\n'
  wa-router instances --admin {admin} --token {token}
  kill one simulator (its port above) and watch the dashboard: down, failover, sessions moved

Ctrl-C stops everything.
"""


def run_demo(port: int = 8080, admin_port: int = 8081, sim_base_port: int = 3001) -> int:
    try:
        asyncio.run(_demo(port, admin_port, sim_base_port))
    except KeyboardInterrupt:
        pass
    except (OSError, RuntimeError) as e:
        print(f"wa-router demo: {e}", file=sys.stderr)
        return 1
    return 0
