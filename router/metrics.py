"""Prometheus metrics, read from live state at scrape time.

The hot path never calls prometheus-client: counters are plain ints on the objects that
own them, and this collector turns them into metric families when Prometheus scrapes.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from router.components import Components
from router.stats import BUCKETS, RequestStats
from router.workerstats import merged


class RouterCollector(Collector):
    def __init__(self, parts: Components) -> None:
        self._parts = parts

    def collect(self) -> Iterator[Metric]:
        parts = self._parts
        router = parts.router
        peers = parts.peers()  # one snapshot per scrape: every family sees the same peers
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
        yield from self._requests(merged(router.stats_sources(), peers))
        yield GaugeMetricFamily(
            "router_store_up",
            "1 when the assignment store is reachable (always 1 in memory)",
            value=1.0 if router.store.healthy else 0.0,
        )
        yield GaugeMetricFamily(
            "router_sessions", "Sessions in the assignment map", value=float(len(router.store))
        )
        yield GaugeMetricFamily(
            "router_held_requests", "Requests waiting for their session to become routable",
            value=float(router.held + sum(p.held for p in peers)),
        )
        ejected = GaugeMetricFamily(
            "router_instance_ejected", "1 while passive checks keep the instance out", labels=["instance"]
        )
        for inst in router.fleet:
            ejected.add_metric([inst.name], 1.0 if inst.state == "ejected" else 0.0)
        yield ejected
        failovers = CounterMetricFamily(
            "router_failovers", "Failovers started per instance", labels=["instance"]
        )
        moves = CounterMetricFamily("router_session_moves", "Session moves by reason", labels=["reason"])
        restore_failed = CounterMetricFamily("router_restore_failures", "Sessions that could not be restored")
        for name, n in parts.failover.failovers_total.items():
            failovers.add_metric([name], float(n))
        for reason, n in parts.mover.moves_total.items():
            moves.add_metric([reason], float(n))
        restore_failed.add_metric([], float(parts.mover.restore_failures))
        yield failovers
        fencing = parts.failover.fencing
        if fencing is not None:
            agents_up = GaugeMetricFamily("router_instance_agent_up",
                                         "1 while the instance's self-fencing agent holds its lease",
                                         labels=["instance"])
            for name, holds in sorted(fencing.agent_up.items()):
                agents_up.add_metric([name], 1.0 if holds else 0.0)
            yield agents_up
            waits = CounterMetricFamily("router_fencing_waits",
                                        "Failovers that waited for an agent to fence its instance")
            waits.add_metric([], float(fencing.waits_total))
            yield waits
        yield moves
        yield restore_failed
        relay = parts.relay
        for name, value, help_text in (
            ("router_webhooks_received", relay.received, "Webhooks accepted from instances"),
            ("router_webhooks_delivered", relay.delivered, "Webhook deliveries a target accepted"),
            ("router_webhooks_retried", relay.retried, "Webhook delivery attempts retried"),
            ("router_webhooks_dead", relay.dead_count, "Webhooks moved to the dead list"),
        ):
            yield CounterMetricFamily(name, help_text, value=float(value))
        yield GaugeMetricFamily(
            "router_webhook_backlog", "Webhooks stored but not yet delivered",
            value=float(relay.backlog()),
        )
        outbox = parts.outbox
        yield CounterMetricFamily("router_outbox_enqueued", "Messages queued in the outbox",
                                  value=float(outbox.enqueued))
        finished = CounterMetricFamily("router_outbox_finished", "Outbox messages that ended, by state",
                                       labels=["state"])
        for state, n in outbox.dispatcher.finished.items():
            finished.add_metric([state], float(n))
        yield finished
        snap = outbox.dispatcher.snapshot
        yield GaugeMetricFamily("router_outbox_backlog", "Outbox messages queued", value=float(snap.backlog))
        yield GaugeMetricFamily(
            "router_outbox_oldest_seconds", "Age of the oldest queued outbox message",
            value=0.0 if snap.oldest is None else max(0.0, time.time() - snap.oldest),
        )
        yield GaugeMetricFamily("router_outbox_sessions_paused", "Sessions whose outbox queue is paused",
                                value=float(snap.sessions_paused))
        yield CounterMetricFamily(
            "router_outbox_unacked", "Sent outbox messages with no message.ack within outbox.ack_timeout",
            value=float(outbox.dispatcher.tracker.unacked_total))
        yield GaugeMetricFamily(
            "router_leader", "1 when this router runs failover (holds the lease)",
            value=1.0 if parts.leadership.is_leader else 0.0,
        )
        reloads = CounterMetricFamily(
            "router_config_reloads", "Config reloads by result (error: refused, old config kept)",
            labels=["result"],
        )
        reloads.add_metric(["success"], float(parts.reloads.success))
        reloads.add_metric(["error"], float(parts.reloads.error))
        yield reloads


    @staticmethod
    def _requests(sources: Iterable[tuple[str, RequestStats]]) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "router_requests", "Responses by instance and status code (instance \"router\": "
            "answered by the router itself)", labels=["instance", "code"],
        )
        per_instance = HistogramMetricFamily(
            "router_instance_request_duration_seconds",
            "Request duration through each instance, first byte in to last byte out",
            labels=["instance"],
        )
        total = [0] * (len(BUCKETS) + 1)
        total_sum = 0.0
        for name, stats in sources:
            for code, n in sorted(stats.codes.items()):
                requests.add_metric([name, str(code)], float(n))
            stats.merge_into(total)
            total_sum += stats.total
            if name != "router":
                per_instance.add_metric([name], _cumulative(stats.buckets), stats.total)
        yield requests
        yield per_instance
        yield HistogramMetricFamily(
            "router_request_duration_seconds", "Request duration, all requests",
            buckets=_cumulative(total), sum_value=total_sum,
        )


def _cumulative(buckets: list[int]) -> list[tuple[str, float]]:
    out: list[tuple[str, float]] = []
    acc = 0
    for bound, n in zip((*BUCKETS, float("inf")), buckets, strict=True):
        acc += n
        out.append(("+Inf" if bound == float("inf") else repr(bound), float(acc)))
    return out


def make_registry(parts: Components) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RouterCollector(parts))
    return registry
