"""The overlayfuse benchmark suite: `scripts/bench` (see docs/benchmarks.md)."""
