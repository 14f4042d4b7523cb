"""Runtime view of the configured instances: address, health flags, in-flight count, pool."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from router.config.model import InstanceConfig
from router.health import InstanceHealth
from router.placement import Member, Ring
from router.stats import new_stats
from router.transport.address import Address
from router.transport.upstream import UpstreamPool


def auth_headers(key: str) -> dict[str, str]:
    """An instance's key as every gateway reads it: WAHA ``X-Api-Key``, Evolution API
    ``apikey``. The one place that builds them (data path, control plane, probes)."""
    return {"X-Api-Key": key, "apikey": key} if key else {}


class Instance:
    """One configured instance. Mutable runtime state lives here; config stays frozen."""

    __slots__ = (
        "address",
        "api_key_line",
        "auth_headers",
        "config",
        "drained",
        "draining",
        "health",
        "healthy",
        "host_line",
        "inflight",
        "name",
        "name_bytes",
        "pool",
        "removing",
        "stats",
    )

    def __init__(self, config: InstanceConfig, *, metrics: bool = True) -> None:
        self.name = config.name
        self.name_bytes = config.name.encode()
        self.health = InstanceHealth()  # the pure state; ``healthy`` mirrors it for speed
        self.healthy = True
        self.drained = False  # an operator drained it (shared through the store)
        self.removing = False  # a reload removed it: dropped once it holds no session
        self.draining = False  # drained or removing: takes no new session
        self.inflight = 0
        self.stats = new_stats(metrics)
        self._configure(config)

    def _configure(self, config: InstanceConfig) -> None:
        self.config = config
        self.address = Address.parse(config.url)
        # Pre-encoded header lines: the hot path only joins bytes.
        self.host_line = b"Host: " + self.address.netloc.encode("idna") + b"\r\n"
        self.auth_headers = auth_headers(config.api_key.value if config.api_key else "")
        # The same headers pre-encoded for the data path, which only joins bytes.
        self.api_key_line = b"".join(
            name.encode() + b": " + value.encode("latin-1") + b"\r\n"
            for name, value in self.auth_headers.items()
        )
        self.pool = UpstreamPool(self.address)

    def reconfigure(self, config: InstanceConfig) -> None:
        """New settings from a reload; requests in flight finish on their connections."""
        old = self.pool
        self._configure(config)
        if old.address == self.address:
            self.pool = old  # same place: keep the warm connections
        else:
            old.close()

    def set_flags(self, *, drained: bool | None = None, removing: bool | None = None) -> None:
        if drained is not None:
            self.drained = drained
        if removing is not None:
            self.removing = removing
        self.draining = self.drained or self.removing

    @property
    def available(self) -> bool:
        """Can take new sessions."""
        return self.healthy and not self.draining

    @property
    def passive_failures(self) -> int:
        return self.health.passive_failures

    @property
    def state(self) -> str:
        """healthy | unhealthy | ejected | draining, as the admin API shows it."""
        if self.draining:
            return "draining"
        status: str = self.health.status.value
        return status

    def __repr__(self) -> str:  # never shows the api key
        return (f"<Instance {self.name} {self.address.origin} {self.state} "
                f"inflight={self.inflight} idle={len(self.pool.idle)}>")


class Fleet:
    """The instances by name, with the placement ring built once per membership change."""

    def __init__(self, configs: Iterable[InstanceConfig], *, metrics: bool = True) -> None:
        self.by_name: dict[str, Instance] = {}
        self.metrics = metrics
        for c in configs:
            self.by_name[c.name] = Instance(c, metrics=metrics)
        self._build_ring()

    def _build_ring(self) -> None:
        self.ring = Ring([_member(i.config) for i in self.by_name.values()])

    def reconfigure(self, configs: Iterable[InstanceConfig], *, metrics: bool) -> list[Instance]:
        """Apply a reloaded instance list: existing instances take their new settings,
        new ones are created (returned, for the caller to start checking), and those no
        longer listed are marked ``removing`` (kept until drained: see ``drop``). An
        instance listed again while it was being removed simply stays."""
        wanted = {c.name: c for c in configs}
        added: list[Instance] = []
        for name, c in wanted.items():
            inst = self.by_name.get(name)
            if inst is None:
                inst = self.by_name[name] = Instance(c, metrics=metrics)
                added.append(inst)
            else:
                if inst.config != c:
                    inst.reconfigure(c)
                inst.set_flags(removing=False)
            if metrics != self.metrics:
                inst.stats = new_stats(metrics)
        for name, inst in self.by_name.items():
            if name not in wanted:
                inst.set_flags(removing=True)
        self.metrics = metrics
        self._build_ring()
        return added

    def drop(self, name: str) -> Instance | None:
        """Forget a removed instance (its sessions are gone); closes its idle connections."""
        inst = self.by_name.pop(name, None)
        if inst is not None:
            inst.pool.close()
            self._build_ring()
        return inst

    def __iter__(self) -> Iterator[Instance]:
        return iter(self.by_name.values())

    def __len__(self) -> int:
        return len(self.by_name)

    def get(self, name: str) -> Instance | None:
        return self.by_name.get(name)

    def healthy(self) -> list[Instance]:
        return [i for i in self.by_name.values() if i.healthy]

    def least_busy(self, exclude: Instance | None = None) -> Instance | None:
        """The healthy instance with the fewest requests in flight (unscoped requests);
        one being removed only when no other is healthy."""
        best: Instance | None = None
        for inst in self.by_name.values():
            if not inst.healthy or inst is exclude:
                continue
            if best is None or (best.removing, best.inflight) > (inst.removing, inst.inflight):
                best = inst
        return best

    async def close(self) -> None:
        for inst in self.by_name.values():
            inst.pool.close()


def _member(c: InstanceConfig) -> Member:
    return Member(c.name, c.weight, c.max_sessions)
