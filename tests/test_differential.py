"""Random layer stacks and operation sequences, run on kernel overlayfs and on overlayfuse
(the harness behind `overlayfuse-compare`). CI runs a bounded number of examples; set
OVERLAYFUSE_EXAMPLES (and OVERLAYFUSE_SEED) for a deep run."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from overlayfuse.compare.harness import OVERLAYFUSE_TEMPLATE, TemplateMount, run_example
from overlayfuse.compare.run import explore, format_report
from overlayfuse.compare.stacks import StackSpec

EXAMPLES = int(os.environ.get("OVERLAYFUSE_EXAMPLES", "60"))
SEED = int(os.environ.get("OVERLAYFUSE_SEED", "20261122"))
PLANTED = (f"{sys.executable} {Path(__file__).with_name('planted_bug.py')} "
           "-o lowerdir={lowerdir},upperdir={upperdir},workdir={workdir} {merged}")


def test_random_sequences_match_the_kernel(kernel_available: None, tmp_path: Path) -> None:
    report = explore(OVERLAYFUSE_TEMPLATE, EXAMPLES, SEED, tmp_path)
    assert report.examples >= EXAMPLES
    assert not report.found, format_report(report, OVERLAYFUSE_TEMPLATE)


def test_random_sequences_with_metacopy_match_the_kernel(kernel_available: None,
                                                         tmp_path: Path) -> None:
    """Both mounted with metacopy=on: metadata changes copy up metadata only, and the
    sequences' renames, writes and layer rotations meet such files."""
    template = OVERLAYFUSE_TEMPLATE.replace("workdir={workdir}", "workdir={workdir},metacopy=on")
    report = explore(template, EXAMPLES // 2, SEED + 1, tmp_path, kernel_options=["metacopy=on"])
    assert report.examples >= EXAMPLES // 2
    assert not report.found, format_report(report, template)


def test_planted_bug_is_reported(kernel_available: None, tmp_path: Path) -> None:
    spec = StackSpec(lowers=({"a": "file:x", "d/b": "file:y"},), upper={})
    example = run_example(tmp_path / "one", spec, [("unlink", "a"), ("stat", "a")],
                          TemplateMount(PLANTED))
    assert [d.kind for d in example.divergences] == ["outcome"]
    assert example.divergences[0].kernel == "ENOENT"
    # ... and the random search finds it on its own, shrunk to a short sequence.
    report = explore(PLANTED, 60, SEED, tmp_path)
    assert report.found
    divergence, shrunk = report.found[0]
    assert len(shrunk.ops) <= 3
    assert "divergences in" in format_report(report, PLANTED).splitlines()[-1]


def test_unmodified_overlayfuse_passes_the_planted_bug_example(kernel_available: None,
                                                               tmp_path: Path) -> None:
    spec = StackSpec(lowers=({"a": "file:x", "d/b": "file:y"},), upper={})
    example = run_example(tmp_path / "one", spec, [("unlink", "a"), ("stat", "a")],
                          TemplateMount(OVERLAYFUSE_TEMPLATE))
    assert example.divergences == []
