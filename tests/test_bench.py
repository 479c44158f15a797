"""A smoke test of the benchmark code itself (bench/), at a small scale: each implementation,
and the floor, gives a result for a metadata phase and for every number of concurrent
clients. Nothing here looks at a time: benchmarks are never asserts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from overlayfuse import mounts

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(os.geteuid() != 0,
                                reason="needs root (kernel overlayfs, dropping caches)")


def test_quick_bench_gives_a_result_per_implementation(tmp_path: Path) -> None:
    sys.path.insert(0, str(REPO))
    try:
        from bench import concurrency, impls
    finally:
        sys.path.remove(str(REPO))
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "bench", "--quick", "--no-scaling",
                           "--phase", "stat_cold", "--phase", "concurrency",
                           "--dir", str(tmp_path / "layers"), "--out", str(out), "--no-docs"],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    results = json.loads((out / "results.json").read_text())
    available = [impl for impl, why in impls.available().items() if why is None]
    assert results["problems"] == []
    assert sorted(results["samples"]["stat_cold"]) == sorted([*available, impls.FLOOR])
    for clients in concurrency.CLIENTS:
        for op, _, _ in concurrency.OPS:
            per_impl = results["samples"][concurrency.metric_name(op, clients)]
            assert sorted(per_impl) == sorted(available)
            assert all(value > 0 for values in per_impl.values() for value in values)
    assert "overlayfuse / floor" in (out / "report.md").read_text()
    run_dir = tmp_path / "layers" / "run"
    assert not any(mounts.is_mounted(d / "mnt") for d in run_dir.iterdir())
