"""Runtime view of the configured instances: address, health flags, in-flight count, pool."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

from router.config.model import InstanceConfig
from router.health import InstanceHealth
from router.placement import Member, Ring
from router.stats import new_stats


@dataclass(frozen=True, slots=True)
class Address:
    scheme: str
    host: str
    port: int
    base_path: str  # "" or "/prefix" without a trailing slash

    @classmethod
    def parse(cls, url: str) -> Address:
        parts = urlsplit(url)
        scheme = parts.scheme or "http"
        port = parts.port or (443 if scheme == "https" else 80)
        return cls(scheme, parts.hostname or "127.0.0.1", port, parts.path.rstrip("/"))

    @property
    def netloc(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"

    @property
    def origin(self) -> str:
        return f"{self.scheme}://{self.netloc}"


class Instance:
    """One configured instance. Mutable runtime state lives here; config stays frozen."""

    __slots__ = (
        "address",
        "api_key_line",
        "config",
        "draining",
        "health",
        "healthy",
        "host_line",
        "inflight",
        "name",
        "name_bytes",
        "pool",
        "stats",
    )

    def __init__(self, config: InstanceConfig, *, metrics: bool = True) -> None:
        from router.proxy.upstream import UpstreamPool  # the pool needs the loop at use only

        self.config = config
        self.name = config.name
        self.name_bytes = config.name.encode()
        self.address = Address.parse(config.url)
        # Pre-encoded header lines: the hot path only joins bytes.
        self.host_line = b"Host: " + self.address.netloc.encode("idna") + b"\r\n"
        key = config.api_key.value if config.api_key else ""
        self.api_key_line = b"X-Api-Key: " + key.encode("latin-1") + b"\r\n" if key else b""
        self.health = InstanceHealth()  # the pure state; ``healthy`` mirrors it for speed
        self.healthy = True
        self.draining = False
        self.inflight = 0
        self.pool = UpstreamPool(self.address)
        self.stats = new_stats(metrics)

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
        return f"Instance({self.name!r}, {self.address.origin!r})"


class Fleet:
    """The instances by name, with the placement ring built once per membership change."""

    def __init__(self, configs: Iterable[InstanceConfig], *, metrics: bool = True) -> None:
        self.by_name: dict[str, Instance] = {}
        for c in configs:
            self.by_name[c.name] = Instance(c, metrics=metrics)
        self.ring = Ring([_member(i.config) for i in self.by_name.values()])

    def __iter__(self) -> Iterator[Instance]:
        return iter(self.by_name.values())

    def __len__(self) -> int:
        return len(self.by_name)

    def get(self, name: str) -> Instance | None:
        return self.by_name.get(name)

    def healthy(self) -> list[Instance]:
        return [i for i in self.by_name.values() if i.healthy]

    def least_busy(self, exclude: Instance | None = None) -> Instance | None:
        """The healthy instance with the fewest requests in flight (unscoped requests)."""
        best: Instance | None = None
        for inst in self.by_name.values():
            if inst.healthy and inst is not exclude and (best is None or inst.inflight < best.inflight):
                best = inst
        return best

    async def close(self) -> None:
        for inst in self.by_name.values():
            inst.pool.close()


def _member(c: InstanceConfig) -> Member:
    return Member(c.name, c.weight, c.max_sessions)
