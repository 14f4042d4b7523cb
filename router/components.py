"""The built parts of one router process, handed whole to the admin port and the metrics
collector (``create_app`` makes them; nothing is filled in later)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from router.config.holder import ConfigHolder
    from router.drain import Drainer
    from router.events import EventLog
    from router.failover import Failover
    from router.leader import Leadership
    from router.moves import Mover
    from router.outbox.service import OutboxService
    from router.reload import Reloads
    from router.routing import Router
    from router.webhooks import WebhookRelay
    from router.workerstats import PeerStats


@dataclass(frozen=True, slots=True, eq=False)
class Components:
    config: ConfigHolder
    router: Router
    events: EventLog
    mover: Mover
    failover: Failover
    drainer: Drainer
    leadership: Leadership
    relay: WebhookRelay
    outbox: OutboxService
    reloads: Reloads
    reload: Callable[[], Awaitable[list[str]]]  # re-read the file (admin POST /admin/reload)
    peers: Callable[[], list[PeerStats]]  # other workers' stats (listen.workers: N)
