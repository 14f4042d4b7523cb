"""What the benchmarks (and the tests that start real processes) share: free ports
(:mod:`.ports`), process control (:mod:`.procs`), CPU and memory accounting (:mod:`.cpu`),
one measure-and-rerun-when-noisy routine (:mod:`.noisy`), config writers (:mod:`.configs`),
wrk runs (:mod:`.wrk`), a Redis probe (:mod:`.redis_probe`), the router's admin API
(:mod:`.admin`), report tables (:mod:`.report`) and the run skeleton of a benchmark
(:mod:`.harness`)."""

from pathlib import Path

HOST = "127.0.0.1"  # every process a benchmark or a test starts listens on loopback only
BENCH_DIR = Path(__file__).resolve().parent.parent
REPO = BENCH_DIR.parent
WRK_DIR = BENCH_DIR / "wrk"
OUT_DIR = BENCH_DIR / "out"
