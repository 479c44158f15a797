"""`overlayfuse-compare`: explore random stacks and operation sequences with hypothesis,
run each on kernel overlayfs and on the implementation mounted by --mount, and report every
unexplained divergence, shrunk to a minimal example.

    overlayfuse-compare --mount 'CMD {lowerdir} {upperdir} {workdir} {merged}' \
        [--examples N] [--seed S]

Exit status 0 when no unexplained divergence is found, 1 when one is; the last line reads
`N divergences in M examples`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import HealthCheck, Phase, given, seed, settings

from ..overlay import KernelOverlay
from .harness import OVERLAYFUSE_TEMPLATE, Divergence, Example, TemplateMount, run_example
from .known import explain
from .stacks import StackSpec, examples


class _Found(Exception):
    def __init__(self, example: Example, divergence: Divergence) -> None:
        super().__init__(divergence.describe())
        self.example = example
        self.divergence = divergence


@dataclass
class Report:
    examples: int = 0
    found: list[tuple[Divergence, Example]] = field(default_factory=list)
    explained: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def signatures(self) -> set[tuple]:
        return {divergence.signature for divergence, _ in self.found}


def explore(template: str, budget: int, random_seed: int, workdir: Path,
            shrink: bool = True, progress: Callable[[int], None] | None = None,
            kernel_options: Sequence[str] = ()) -> Report:
    """Run up to `budget` examples; each new kind of divergence is shrunk and recorded,
    and the search goes on for other kinds. The kernel is mounted with `kernel_options`
    (those the template gives the tested implementation)."""
    report = Report()
    mount = TemplateMount(template)
    started = time.monotonic()
    attempt = 0
    while report.examples < budget:
        known_signatures = report.signatures

        @settings(max_examples=budget - report.examples, database=None, deadline=None, derandomize=False,
                  suppress_health_check=list(HealthCheck),
                  phases=[Phase.generate, Phase.shrink] if shrink else [Phase.generate])
        @seed(random_seed + attempt)
        @given(example=examples())
        def check(example: tuple[StackSpec, list]) -> None:
            spec, ops = example
            report.examples += 1
            if progress is not None:
                progress(report.examples)
            result = run_example(workdir / "example", spec, ops, mount, kernel_options)
            for divergence in result.divergences:
                known = explain(divergence)
                if known is not None:
                    report.explained[known.name] = report.explained.get(known.name, 0) + 1
                elif divergence.signature not in known_signatures:
                    raise _Found(result, divergence)

        try:
            check()
            break
        except _Found as found:
            report.found.append((found.divergence, found.example))
        except BaseExceptionGroup as group:
            # hypothesis could not reproduce a divergence (FlakyFailure): it still counts,
            # reported as first seen, unshrunk.
            flaky = group.subgroup(lambda error: isinstance(error, _Found))
            if flaky is None:
                raise
            first = _first_found(flaky)
            first.example.divergences.append(Divergence("flaky", "did not reproduce", None,
                                                        None))
            report.found.append((first.divergence, first.example))
        attempt += 1
    report.seconds = time.monotonic() - started
    return report


def _first_found(group: BaseExceptionGroup) -> _Found:
    for error in group.exceptions:
        if isinstance(error, _Found):
            return error
        if isinstance(error, BaseExceptionGroup):
            return _first_found(error)
    raise AssertionError("no divergence in the group")


def format_report(report: Report, template: str) -> str:
    lines = [f"implementation: {template}"]
    for number, (divergence, example) in enumerate(report.found, 1):
        lines += ["", f"divergence {number}: {divergence.describe()}", example.script()]
    if report.explained:
        lines += ["", "explained (intended) divergences seen: " + ", ".join(
            f"{name} x{count}" for name, count in sorted(report.explained.items()))]
    lines += ["", f"time: {report.seconds:.0f} s",
              f"{len(report.found)} divergences in {report.examples} examples"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="overlayfuse-compare",
        description="Compare an overlay implementation against kernel overlayfs on random "
                    "layer stacks and operation sequences.")
    parser.add_argument("--mount", default=OVERLAYFUSE_TEMPLATE,
                        help="mount command with {lowerdir} (colon-joined, top first), "
                             "{upperdir}, {workdir}, {merged}; it must return once mounted "
                             "(default: overlayfuse itself)")
    parser.add_argument("--examples", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-shrink", action="store_true",
                        help="report divergences as found, without minimising them")
    args = parser.parse_args(argv)
    reason = KernelOverlay.unavailable()
    if reason is not None:
        print(f"overlayfuse-compare: cannot run: {reason}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="overlayfuse-compare-") as tmp:
        report = explore(args.mount, args.examples, args.seed, Path(tmp),
                         shrink=not args.no_shrink)
    print(format_report(report, args.mount))
    return 1 if report.found else 0


if __name__ == "__main__":
    raise SystemExit(main())
