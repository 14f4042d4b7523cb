"""The benchmarks (``python -m bench.<script>`` from the repo root) and their shared
library, :mod:`bench.lib`, which the tests use too."""
