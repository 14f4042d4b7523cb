"""The Redis keys the agent and the leader share, and the round trips on them.

Keys (``P`` is ``store.prefix``; ``{i:<instance>}`` keeps one instance's keys in one hash
slot): ``P agent:{i:X}`` the lease (JSON ``{"holder", "renew", "fence_after"}``, PX
``fence_after``); ``P agent:{i:X}:seen`` the same JSON plus ``ttl``, PX ``SEEN_TTL``, set
with every renewal, so a leader (even a new one) can tell how long ago the agent last
renewed from Redis' own clock (no clock skew between hosts); ``P agent:{i:X}:stop`` the
leader's stop order (an id), and ``P agent:{i:X}:stopped`` the agent's acknowledgement
(the id it executed), both PX ``ORDER_TTL``.

Callers bound the calls and map errors (``guarded`` on the agent, ``Commands.call`` in
the router).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Final

from redis.asyncio import Redis

SEEN_TTL: Final = 86400.0  # a day: longer than any sensible failover.agent_memory
ORDER_TTL: Final = 600.0  # an order nobody executed in 10 minutes is stale


@dataclass(frozen=True, slots=True)
class AgentKeys:
    lease: str
    seen: str
    order: str
    ack: str


def keys(prefix: str, instance: str) -> AgentKeys:
    base = f"{prefix}agent:{{i:{instance}}}"
    return AgentKeys(base, base + ":seen", base + ":stop", base + ":stopped")


def text(v: Any) -> str | None:
    return v.decode() if isinstance(v, bytes) else v if isinstance(v, str) else None


# -- the agent's side ---------------------------------------------------------------------


async def renew(client: Redis, k: AgentKeys, holder: str, renew_every: float,
                fence_after: float) -> str | None:
    """Set the lease and the seen record in one transaction; return the posted order."""
    info = {"holder": holder, "renew": renew_every, "fence_after": fence_after}
    pipe = client.pipeline(transaction=True)
    pipe.set(k.lease, json.dumps(info), px=max(1, round(fence_after * 1000)))
    pipe.set(k.seen, json.dumps({**info, "ttl": SEEN_TTL}), px=round(SEEN_TTL * 1000))
    pipe.get(k.order)
    replies = await pipe.execute()
    return text(replies[2])


async def acknowledge(client: Redis, k: AgentKeys, order: str) -> None:
    await client.set(k.ack, order, px=round(ORDER_TTL * 1000))


# -- the leader's side --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AgentRecord:
    """What Redis says about an instance's agent. ``age``: seconds since its latest
    renewal (None: no agent renewed within ``SEEN_TTL``)."""

    lease: bool
    age: float | None
    fence_after: float
    ack: str | None
    renew: float = 1.0


async def read(client: Redis, k: AgentKeys) -> AgentRecord:
    pipe = client.pipeline(transaction=True)
    pipe.pttl(k.lease)
    pipe.get(k.seen)
    pipe.pttl(k.seen)
    pipe.get(k.ack)
    lease_ttl, seen, seen_ttl, ack = await pipe.execute()
    age: float | None = None
    fence_after = renew_every = 0.0
    raw = text(seen)
    if raw is not None and int(seen_ttl) > 0:
        try:
            info = json.loads(raw)
            fence_after = float(info["fence_after"])
            renew_every = float(info["renew"])
            age = max(0.0, float(info["ttl"]) - int(seen_ttl) / 1000)
        except (ValueError, KeyError, TypeError):
            age = None  # not ours or corrupt: treated as no agent
    return AgentRecord(int(lease_ttl) > 0, age, fence_after, text(ack), renew_every)


async def post_order(client: Redis, k: AgentKeys, order: str) -> None:
    await client.set(k.order, order, px=round(ORDER_TTL * 1000))


async def clear_order(client: Redis, k: AgentKeys) -> None:
    """Withdraw an order once the failover is decided: a healed agent must not execute a
    stale stop-everything on sessions that may since have been assigned to it."""
    await client.delete(k.order)


async def leases(client: Redis, ks: list[AgentKeys]) -> list[bool]:
    """Which of these agents hold their lease now (for ``router_instance_agent_up``)."""
    if not ks:
        return []
    pipe = client.pipeline(transaction=False)
    for k in ks:
        pipe.exists(k.lease)
    return [bool(n) for n in await pipe.execute()]
