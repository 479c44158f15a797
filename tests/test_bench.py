"""A smoke test of the benchmark code itself (bench/), at a small scale: each implementation,
and the floor, gives a result for a metadata phase, for every number of concurrent clients
and for the chown commands (with metacopy=on where the implementation has it). Nothing here
looks at a time: benchmarks are never asserts."""

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
        from bench import chown, concurrency, impls
    finally:
        sys.path.remove(str(REPO))
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "bench", "--quick", "--no-scaling",
                           "--phase", "stat_cold", "--phase", "concurrency", "--phase", "chown",
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
    with_metacopy = [impl for impl in available if impl != impls.FUSE_OVERLAYFS]
    for metric in (*chown.COMMANDS, *(m.name for m in chown.UPPER.values())):
        assert sorted(results["samples"][metric]) == sorted(available)
        assert sorted(results["samples"][metric + "_metacopy"]) == sorted(with_metacopy)
    for impl in with_metacopy:     # a metadata-only copy-up writes none of the file's data
        copied = results["samples"]["upper_big_mib"][impl][0]
        assert results["samples"]["upper_big_mib_metacopy"][impl][0] < copied / 10
    # The command timed is this checkout installed as users install it, not the editable one.
    command = Path(results["config"]["overlayfuse_command"])
    assert not command.is_relative_to(REPO)
    imported = subprocess.run([str(command.parent / "python"), "-c",
                               "import overlayfuse; print(overlayfuse.__file__)"],
                              capture_output=True, text=True, check=True, cwd="/"
                              ).stdout.strip()
    assert Path(imported).is_relative_to(command.parent.parent)
    report = (out / "report.md").read_text()
    assert "overlayfuse / floor" in report
    assert "a non-editable install of this checkout" in report
    assert "overlayfuse metacopy / overlayfuse" in report
    run_dir = tmp_path / "layers" / "run"
    assert not any(mounts.is_mounted(d / "mnt") for d in run_dir.iterdir())
