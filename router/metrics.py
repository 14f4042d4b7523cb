"""Prometheus metrics, read from live state at scrape time.

The hot path never calls prometheus-client: counters are plain ints on the objects that
own them, and this collector turns them into metric families when Prometheus scrapes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from router.routing import Router


class RouterCollector(Collector):
    def __init__(self, current_router: Callable[[], Router]) -> None:
        self._router = current_router

    def collect(self) -> Iterator[Metric]:
        router = self._router()
        up = GaugeMetricFamily("router_instance_up", "1 when the instance is healthy", labels=["instance"])
        sessions = GaugeMetricFamily(
            "router_instance_sessions", "Sessions assigned to the instance", labels=["instance"]
        )
        inflight = GaugeMetricFamily(
            "router_instance_inflight", "Requests in flight to the instance", labels=["instance"]
        )
        counts = router.store.counts()
        for inst in router.fleet:
            up.add_metric([inst.name], 1.0 if inst.healthy else 0.0)
            sessions.add_metric([inst.name], float(counts.get(inst.name, 0)))
            inflight.add_metric([inst.name], float(inst.inflight))
        yield up
        yield sessions
        yield inflight
        yield GaugeMetricFamily(
            "router_store_up",
            "1 when the assignment store is reachable (always 1 in memory)",
            value=1.0 if router.store.healthy else 0.0,
        )
        yield GaugeMetricFamily(
            "router_sessions", "Sessions in the assignment map", value=float(len(router.store))
        )


def make_registry(current_router: Callable[[], Router]) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RouterCollector(current_router))
    return registry
