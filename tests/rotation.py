"""Layer rotation, as a rebuilt image does it: rounds of operations, each on a fresh upper dir
over the lower layers so far, after which that upper dir becomes the top lower layer."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from overlayfuse.compare.trees import build_layer


def run_rotations(base: Path, lower_specs: Sequence[dict[str, str]], first_upper: dict[str, str],
                  rounds: Sequence[Sequence[tuple]], mount: Callable[..., Any],
                  observe: Callable[[dict, Sequence[tuple]], object],
                  options: Sequence[str] = (),
                  prepare: Callable[[list[str]], None] | None = None) -> list[object]:
    """Lay out `lower_specs` (top first) under `base`, let `prepare(lowers)` add to them, then
    for each round mount (`mount(stack, options=...)`) and collect `observe(stack, ops)`."""
    lowers: list[str] = []
    for index, spec in enumerate(reversed(lower_specs)):
        build_layer(base / f"lower{index}", spec)
        lowers.insert(0, str(base / f"lower{index}"))
    if prepare is not None:
        prepare(lowers)
    outcome = []
    for number, ops in enumerate(rounds):
        upper, work, merged = base / f"upper{number}", base / f"work{number}", base / "merged"
        build_layer(upper, first_upper if number == 0 else {})
        work.mkdir()
        merged.mkdir(exist_ok=True)
        stack = {"lowers": list(lowers), "upper": str(upper), "work": str(work),
                 "merged": merged}
        with mount(stack, options=list(options)):
            outcome.append(observe(stack, ops))
        lowers.insert(0, str(upper))
    return outcome
