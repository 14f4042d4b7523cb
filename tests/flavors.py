"""The two APIs the system tests run against (issue 19): the simulator's WAHA flavour and its
Evolution API v2 flavour, with what differs between them in one place: how a session is
created, listed and used, the sim's arguments and auth, and the router's profile.

Statuses read from an evolution sim are mapped to WAHA's words (open -> WORKING), so a test
states its expectations once for both."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aiohttp

EVOLUTION_STATUS = {"open": "WORKING", "connecting": "STARTING", "close": "STOPPED"}
CHAT = "4915112345678"


@dataclass(frozen=True)
class Flavor:
    name: str  # waha | evolution
    key: str | None = None  # every sim requires it; the router is given it per instance

    def __str__(self) -> str:
        return self.name

    @property
    def evolution(self) -> bool:
        return self.name == "evolution"

    @property
    def can_stop(self) -> bool:
        """Whether the router can end one copy of a session (Evolution API cannot)."""
        return not self.evolution

    def sim_args(self) -> tuple[str, ...]:
        return ("--flavor", self.name) + (("--api-key", self.key) if self.key else ())

    @property
    def headers(self) -> dict[str, str]:
        """What a direct call to a sim needs."""
        if not self.key:
            return {}
        return {"apikey": self.key} if self.evolution else {"X-Api-Key": self.key}

    @property
    def ready_path(self) -> str:
        """A path the sim answers 2xx without auth."""
        return "/" if self.evolution else "/ping"

    def router_lines(self) -> list[str]:
        """Top-level router config lines: the profile (its control-plane defaults)."""
        return [f"profile: {self.name}"]

    def instance_extra(self) -> str:
        return f", api_key: '{self.key}'" if self.key else ""

    # -- calls through the router or to a sim ------------------------------------------------

    async def create(self, http: aiohttp.ClientSession, base: str, session: str,
                     timeout: aiohttp.ClientTimeout, *, start: bool = True,
                     direct: bool = False) -> tuple[int, str]:
        """Create (and start) a session through the router at ``base``, or ``direct`` on
        the sim at ``base`` (with its key)."""
        headers = self.headers if direct else {}
        if self.evolution:
            req = http.post(f"{base}/instance/create", timeout=timeout, headers=headers,
                            json={"instanceName": session, "qrcode": start,
                                  "integration": "WHATSAPP-BAILEYS"})
        else:
            req = http.post(f"{base}/api/sessions", json={"name": session, "start": start},
                            timeout=timeout, headers=headers)
        async with req as resp:
            return resp.status, await resp.text()

    async def sessions(self, http: aiohttp.ClientSession, base: str) -> dict[str, str]:
        """What one sim runs, asked directly: session -> WAHA-style status."""
        timeout = aiohttp.ClientTimeout(total=5)
        if self.evolution:
            async with http.get(f"{base}/instance/fetchInstances", headers=self.headers,
                                timeout=timeout) as r:
                assert r.status == 200, (base, r.status, await r.text())
                rows: list[dict[str, Any]] = await r.json()
            return {i["name"]: EVOLUTION_STATUS[i["connectionStatus"]] for i in rows}
        async with http.get(f"{base}/api/sessions?all=true", headers=self.headers,
                            timeout=timeout) as r:
            assert r.status == 200, (base, r.status, await r.text())
            items: list[dict[str, Any]] = await r.json()
        return {s["name"]: s["status"] for s in items}

    async def working(self, http: aiohttp.ClientSession, base: str, session: str) -> bool:
        """Whether the session is ready, asked through the router at ``base``."""
        async with self.request(http, base, session, "get", aiohttp.ClientTimeout(total=10)) as r:
            if r.status != 200:
                return False
            body = await r.json()
        state = body.get("instance", {}).get("state") if self.evolution else body.get("status")
        return bool(state == ("open" if self.evolution else "WORKING"))

    def request(self, http: aiohttp.ClientSession, base: str, session: str, op: str,
                timeout: aiohttp.ClientTimeout) -> Any:
        """One call of the load: ``get`` (the session's state), ``chats`` (a GET the sim
        echoes) or ``send`` (a text)."""
        if self.evolution:
            if op == "get":
                return http.get(f"{base}/instance/connectionState/{session}", timeout=timeout)
            if op == "chats":  # a GET, like WAHA's: a POST in flight at a crash may fail
                return http.get(f"{base}/group/fetchAllGroups/{session}?getParticipants=false",
                                timeout=timeout)
            return http.post(f"{base}/message/sendText/{session}", timeout=timeout,
                             json={"number": CHAT, "text": "hi"})
        if op == "get":
            return http.get(f"{base}/api/sessions/{session}", timeout=timeout)
        if op == "chats":
            return http.get(f"{base}/api/{session}/chats", timeout=timeout)
        return http.post(f"{base}/api/sendText", timeout=timeout,
                         json={"session": session, "chatId": f"{CHAT}@c.us", "text": "hi"})


WAHA = Flavor("waha")
EVOLUTION = Flavor("evolution", key="evo-instance-key")
BOTH = (WAHA, EVOLUTION)
