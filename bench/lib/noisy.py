"""Measuring on a noisy machine: wait until other processes are quiet, measure, and measure
again when they were busy during it. The one implementation every benchmark uses."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Iterable
from typing import TypeVar

from bench.lib.cpu import others_cores
from bench.lib.procs import Processes

NOISY = 0.10  # other processes using more than this share of a core make a run noisy

T = TypeVar("T")


def add_quiet_args(p: argparse.ArgumentParser) -> None:
    """--wait-quiet and --noisy-retries, as every benchmark here takes them."""
    p.add_argument(
        "--wait-quiet",
        type=float,
        default=15,
        help="before each measured run, wait up to this many seconds for other processes "
        "to use < 10%% of a core (15)",
    )
    p.add_argument(
        "--noisy-retries",
        type=int,
        default=2,
        help="run a measurement again (up to this many times) when other processes used "
        "more than 10%% of a core during it (2)",
    )


def wait_quiet(procs: Processes, max_wait: float, limit: float = NOISY) -> float:
    """Wait (at most ``max_wait`` s) until processes that are not ours use less than
    ``limit`` of a core over half a second; return the last value seen."""
    deadline = time.monotonic() + max_wait
    said = False
    while True:
        others = others_cores([p.pid for p in procs.procs])
        if others < limit or time.monotonic() >= deadline:
            if said:
                print(f"  ... done waiting: others at {others:.0%}", file=sys.stderr)
            return others
        if not said:
            print(
                f"  waiting up to {max_wait:g}s: other processes use {others:.0%} of a core",
                file=sys.stderr,
                flush=True,
            )
            said = True


def measure_quietly(
    procs: Processes,
    args: argparse.Namespace,
    run: Callable[[float, int], T],
    others: Callable[[T], float | None],
    what: str,
    retries: bool = True,
) -> tuple[T, list[T]]:
    """Wait for a quiet machine (``args.wait_quiet``), then ``run(quiet, attempt)`` (quiet:
    what other processes used just before); while other processes used more than
    ``NOISY`` of a core during it, wait and run it again, up to ``args.noisy_retries``
    times (never for ``retries`` false: warmups). Returns the quietest attempt and the
    others (discarded)."""
    tries = 1 + args.noisy_retries if retries else 1
    attempts: list[T] = []
    for attempt in range(tries):
        procs.check_alive()
        quiet = wait_quiet(procs, args.wait_quiet)  # also lets the last run settle
        attempts.append(run(quiet, attempt))
        busy = others(attempts[-1]) or 0.0
        if busy <= NOISY:
            break
        if attempt < tries - 1:
            print(f"  ({what}: noisy, {busy:.0%} others; running it again)", file=sys.stderr)
    kept = min(attempts, key=lambda a: others(a) or 0.0)
    return kept, [a for a in attempts if a is not kept]


def noisy_note(others: Iterable[float | None]) -> list[str]:
    """The report's warning when other processes used more than ``NOISY`` of a core
    during a measured run (``others``: what they used in each)."""
    worst = max((o or 0.0 for o in others), default=0.0)
    if worst > NOISY:
        return [
            f"WARNING: other processes used up to {worst:.0%} of a core during measured runs: "
            "rerun on a quiet machine before trusting these numbers."
        ]
    return []
