"""Which sessions each sim runs, from the sims' own status, every 100 ms: the ground truth
of the partition tests ("no session ever WORKING on two sims at once").

    python -m tests.sampler --out FILE --seconds N NAME=URL [NAME=URL ...]

runs where the sims are (inside a test's network namespace, so that a partition does not
blind it) and appends one JSON line per sim and sample: ``{"t": <wall clock>, "sim":
NAME, "working": [...]}`` (``null`` when the sim did not answer). ``double_live`` reads
those lines back (pure: tested with tables).
"""

from __future__ import annotations

import argparse
import itertools
import json
import signal
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

INTERVAL = 0.1


def working(url: str) -> list[str] | None:
    try:
        with urllib.request.urlopen(url + "/api/sessions", timeout=0.5) as r:
            return sorted(s["name"] for s in json.load(r) if s.get("status") == "WORKING")
    except (urllib.error.URLError, OSError, ValueError):
        return None


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--seconds", type=float, required=True)  # bounded, whatever happens
    ap.add_argument("sims", nargs="+")
    args = ap.parse_args(argv)
    sims = [s.split("=", 1) for s in args.sims]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    end = time.monotonic() + args.seconds
    with Path(args.out).open("a", buffering=1) as out:
        while time.monotonic() < end:
            tick = time.monotonic()
            for name, url in sims:
                out.write(json.dumps({"t": time.time(), "sim": name, "working": working(url)})
                          + "\n")
            time.sleep(max(0.0, INTERVAL - (time.monotonic() - tick)))
    return 0


# -- reading the samples back (pure) -------------------------------------------------------

Sample = tuple[float, str, frozenset[str] | None]  # time, sim, sessions WORKING (None: no answer)


def read(paths: Iterable[Path]) -> list[Sample]:
    samples: list[Sample] = []
    for path in paths:
        text = path.read_text()
        # A line the sampler is writing right now is left for the next read.
        for line in text[:text.rfind("\n") + 1].splitlines():
            d = json.loads(line)
            w = d["working"]
            samples.append((float(d["t"]), d["sim"], None if w is None else frozenset(w)))
    return sorted(samples, key=lambda s: s[0])


def double_live(samples: Sequence[Sample], hold: float = 2 * INTERVAL,
                unanswered: Mapping[str, bool] | None = None) -> tuple[float, set[str]]:
    """Seconds during which some session was WORKING on two sims, and which sessions were.

    Each sample stands from its time until the sim's next sample (at most ``hold`` later).
    A sample without an answer counts as the sim's previous one (a sim that does not
    answer its own namespace's sampler may still run its sessions), unless
    ``unanswered[sim]`` is True (the test killed it: nothing runs there)."""
    dead = unanswered or {}
    by_sim: dict[str, list[tuple[float, frozenset[str]]]] = {}
    for t, sim, w in samples:
        runs = by_sim.setdefault(sim, [])
        if w is None:
            w = frozenset() if dead.get(sim) or not runs else runs[-1][1]
        runs.append((t, w))
    # Each sim's state as intervals [start, end) with the sessions it ran, in time order.
    spans: dict[str, list[tuple[float, float, frozenset[str]]]] = {}
    for sim, runs in by_sim.items():
        spans[sim] = [(t, min(runs[i + 1][0] if i + 1 < len(runs) else t + hold, t + hold), w)
                      for i, (t, w) in enumerate(runs)]
    edges = sorted({e for sp in spans.values() for a, b, _ in sp for e in (a, b)})
    at = dict.fromkeys(spans, 0)  # each sim's first span that may still be current
    total = 0.0
    who: set[str] = set()
    for a, b in itertools.pairwise(edges):
        mid = (a + b) / 2
        live: list[frozenset[str]] = []
        for sim, sp in spans.items():
            i = at[sim]
            while i < len(sp) and sp[i][1] <= mid:
                i += 1
            at[sim] = i
            if i < len(sp) and sp[i][0] <= mid:
                live.append(sp[i][2])
        doubled = {x for j, w in enumerate(live) for other in live[j + 1:] for x in w & other}
        if doubled:
            total += b - a
            who |= doubled
    return total, who


if __name__ == "__main__":
    raise SystemExit(main())
