"""The router's admin API, read the way Prometheus and an operator do (/metrics samples,
scrapes timed under load, JSON endpoints), and the backend nginx's stub_status."""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import threading
import time
from dataclasses import dataclass
from typing import Any

from bench.lib.procs import BenchError, http_get

_STUB = re.compile(r"server accepts handled requests\s+(\d+)\s+(\d+)\s+(\d+)")
_REQUESTS_SAMPLE = re.compile(r"^router_requests_total\{[^}]*\} (\S+)$", re.M)


@dataclass
class Scrape:
    """One GET of a router's admin /metrics."""

    at: float  # seconds since the measured run started (negative: before it)
    seconds: float  # until the whole body was read
    status: int
    size: int  # body bytes
    responses: int | None  # sum of every router_requests_total sample


def scrape_metrics(admin_port: int, t0: float, timeout: float = 5.0) -> Scrape:
    """GET /metrics once, timed; ``t0``: the instant ``Scrape.at`` counts from."""
    start = time.monotonic()
    status, _, body = http_get(admin_port, "/metrics", timeout=timeout)
    seconds = time.monotonic() - start
    samples = _REQUESTS_SAMPLE.findall(body.decode(errors="replace")) if status == 200 else []
    return Scrape(
        at=start - t0,
        seconds=seconds,
        status=status,
        size=len(body),
        responses=round(sum(float(v) for v in samples)) if status == 200 else None,
    )


class LoadScraper:
    """Scrapes /metrics ``n`` times, evenly spread over a measured run, from a thread
    (what Prometheus does, at a much higher rate than its usual 15 s interval)."""

    def __init__(self, admin_port: int, duration: float, n: int) -> None:
        self.admin_port, self.duration, self.n = admin_port, duration, n
        self.scrapes: list[Scrape] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self.t0 = time.monotonic()
        self.thread = threading.Thread(target=self._run, name="metrics-scraper", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        for k in range(1, self.n + 1):
            due = self.t0 + self.duration * k / (self.n + 1)
            if self._stop.wait(max(0.0, due - time.monotonic())):
                return
            try:
                self.scrapes.append(scrape_metrics(self.admin_port, self.t0))
            except (OSError, http.client.HTTPException) as e:
                self.errors.append(f"GET /metrics at {time.monotonic() - self.t0:.1f}s: {e}")

    def join(self) -> tuple[list[Scrape], list[str]]:
        """Stop scraping; the scrapes done and the errors seen."""
        self._stop.set()
        self.thread.join(10)
        return self.scrapes, self.errors


def metric_samples(admin_port: int, prefix: str = "") -> dict[str, float]:
    """Every sample on the admin /metrics whose line starts with ``prefix``, by its full
    name (labels included)."""
    status, _, body = http_get(admin_port, "/metrics", timeout=10.0)
    if status != 200:
        raise BenchError(f"router /metrics: HTTP {status}")
    out: dict[str, float] = {}
    for line in body.decode(errors="replace").splitlines():
        if line.startswith(prefix) and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                out[name] = float(value)
    return out


def metric_value(admin_port: int, name: str) -> float | None:
    """The value of an unlabelled sample ``name`` on the router's admin /metrics."""
    try:
        return metric_samples(admin_port, name + " ").get(name)
    except BenchError:
        return None


def get_json(port: int, path: str, timeout: float = 10.0) -> Any:
    """GET ``path`` (200 expected) and its JSON body."""
    status, _, body = http_get(port, path, timeout=timeout)
    if status != 200:
        raise BenchError(f"GET :{port}{path}: HTTP {status} {body[:200]!r}")
    return json.loads(body)


def backend_counters(status_port: int) -> tuple[int, int]:
    """(connections accepted, requests served) by the backend nginx so far (its
    stub_status), not counting the status request itself."""
    status, _, body = http_get(status_port, "/")
    m = _STUB.search(body.decode())
    if status != 200 or m is None:
        raise BenchError(f"backend stub_status: HTTP {status} {body[:200]!r}")
    return int(m.group(1)) - 1, int(m.group(3)) - 1
