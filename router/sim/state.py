"""The simulator's per-app state, reached through the ``SIM`` AppKey."""

from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import web

from router.sim.events import Hub
from router.sim.manager import SessionManager
from router.sim.outbound import Outbound
from router.sim.stats import Stats
from router.sim.webhooks import WebhookSender


@dataclass
class SimState:
    """Everything one simulated instance holds."""

    name: str
    hub: Hub
    sessions: SessionManager
    stats: Stats
    sender: WebhookSender | None = None
    api_key: str | None = None
    send_wait: float = 5.0
    websockets: set[web.WebSocketResponse] = field(default_factory=set)
    outbound: Outbound = field(default_factory=Outbound)
    flavor: str = "waha"  # or "evolution": which API it speaks (router.sim.evolution)


SIM = web.AppKey("sim", SimState)


def sim(request: web.Request) -> SimState:
    """The state of the app serving ``request``."""
    return request.app[SIM]
