"""Run one example (a layer stack and a sequence of operations) on kernel overlayfs and on an
implementation under test, and report where they differ: the outcome of each operation, the
visible tree afterwards, the upper dir on disk, and whether any lower layer changed."""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .. import mounts
from ..overlay import KernelOverlay
from .fsops import Op, apply
from .stacks import StackSpec, kernel_form
from .trees import build_layer, raw_snapshot, snapshot

OVERLAYFUSE_TEMPLATE = ("{python} -m overlayfuse -o lowerdir={lowerdir},upperdir={upperdir},"
                        "workdir={workdir} {merged}")

# Private bookkeeping xattrs (the copy-up origin, impure dirs, the layer uuid): their values
# name inodes and filesystems, which differ between two otherwise identical stacks, and
# fuse-overlayfs writes none of them; the merged view does not show them.
KERNEL_BOOKKEEPING_XATTRS = (".overlay.origin", ".overlay.impure", ".overlay.uuid")


@dataclass(frozen=True)
class Divergence:
    kind: str            # "outcome", "view", "upper", "lower-modified"
    where: str           # the operation, or the path
    kernel: object
    tested: object
    step: int = -1       # index of the operation, for outcomes

    @property
    def signature(self) -> tuple:
        if self.kind == "outcome":
            return (self.kind, self.where.split(",")[0], self.kernel, self.tested)
        return (self.kind, _shape(self.kernel), _shape(self.tested))

    def describe(self) -> str:
        if self.kind == "outcome":
            return f"step {self.step}: {self.where}: kernel {self.kernel}, tested {self.tested}"
        return f"{self.kind} at {self.where}: kernel {self.kernel}, tested {self.tested}"


def _shape(value: object) -> object:
    if isinstance(value, dict):
        return tuple(sorted(k for k in value if k != "sha"))
    return value if value is None else type(value).__name__


@dataclass
class Example:
    spec: StackSpec
    ops: Sequence[Op]
    divergences: list[Divergence] = field(default_factory=list)

    def script(self) -> str:
        """A reproducible description: the stack, then the operations in order."""
        lines = ["# layers, top first (upper, then lowers):", f"upper = {self.spec.upper!r}"]
        lines += [f"lower{i} = {layer!r}" for i, layer in enumerate(self.spec.lowers)]
        lines.append("# operations on the merged dir:")
        lines += [f"{op!r}," for op in self.ops]
        return "\n".join(lines)


def _lay_out(base: Path, spec: StackSpec, for_kernel: bool) -> dict:
    translate = kernel_form if for_kernel else (lambda layer: layer)
    lowers = []
    for index, layer in enumerate(spec.lowers):
        path = base / f"lower{index}"
        build_layer(path, translate(layer))
        lowers.append(path)
    upper = base / "upper"
    build_layer(upper, spec.upper)
    for name in ("work", "merged"):
        (base / name).mkdir()
    return {"lowers": lowers, "upper": upper, "work": base / "work", "merged": base / "merged"}


class TemplateMount:
    """An implementation mounted by a command template; unmounted with fusermount3/umount,
    its daemon found by the (unique) mount path in its command line and stopped by pid."""

    def __init__(self, template: str) -> None:
        self.template = template

    @contextlib.contextmanager
    def __call__(self, stack: dict) -> Iterator[None]:
        values = {"lowerdir": ":".join(str(p) for p in stack["lowers"]),
                  "upperdir": str(stack["upper"]), "workdir": str(stack["work"]),
                  "merged": str(stack["merged"]), "python": shlex.quote(sys.executable)}
        command = shlex.split(self.template.format(**values))
        done = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"mount command failed ({done.returncode}): "
                               f"{done.stderr.decode(errors='replace').strip()}")
        try:
            mounts.wait_mounted(stack["merged"])
            yield
        finally:
            mounts.unmount(stack["merged"])
            _stop_daemons(str(stack["merged"]))


def _stop_daemons(merged: str) -> None:
    """Wait for the daemons serving `merged` to exit; kill (by pid) those that do not."""
    deadline = time.monotonic() + 5
    while True:
        pids = _pids_mentioning(merged)
        if not pids:
            return
        if time.monotonic() > deadline:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            return
        time.sleep(0.01)


def _pids_mentioning(text: str) -> list[int]:
    pids = []
    needle = text.encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if needle in f.read().split(b"\0"):
                    pids.append(int(entry))
        except OSError:
            continue
    return pids


@contextlib.contextmanager
def _kernel(stack: dict, options: Sequence[str] = ()) -> Iterator[None]:
    with KernelOverlay(stack["lowers"], stack["upper"], stack["work"], stack["merged"],
                       options=options):
        yield


def _rotate(stack: dict) -> None:
    """Make the upper dir the top lower layer and start a fresh upper dir (an image rebuilt
    from yesterday's container), as a new stack at the same paths otherwise."""
    number = len(stack["lowers"])
    base = Path(stack["merged"]).parent
    stack["lowers"] = [stack["upper"], *stack["lowers"]]
    stack["upper"], stack["work"] = base / f"upper{number}", base / f"work{number}"
    stack["upper"].mkdir()
    stack["work"].mkdir()


def _upper_view(root: Path) -> dict:
    view = raw_snapshot(root)
    for info in view.values():
        xattrs = info.get("xattrs")
        if isinstance(xattrs, dict):
            info["xattrs"] = {name: value for name, value in xattrs.items()
                              if not name.endswith(KERNEL_BOOKKEEPING_XATTRS)}
    return view


def _compare_trees(kind: str, kernel: dict, tested: dict) -> list[Divergence]:
    found = []
    for path in sorted(set(kernel) | set(tested)):
        if kernel.get(path) != tested.get(path):
            found.append(Divergence(kind, path, kernel.get(path), tested.get(path)))
    return found


class _Timeout(Exception):
    pass


def _raise_timeout(signum: int, frame: object) -> None:
    raise _Timeout


def _apply_bounded(root: Path, op: Op, seconds: float = 10.0) -> str:
    """apply(), but an operation that blocks (a hung implementation) is reported, not
    waited for."""
    previous = signal.signal(signal.SIGALRM, _raise_timeout)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        return apply(root, op)
    except _Timeout:
        return "TIMEOUT"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run_example(base: Path, spec: StackSpec, ops: Sequence[Op], mount_tested: TemplateMount,
                kernel_options: Sequence[str] = ()) -> Example:
    """Run `ops` on both sides (the kernel mounted with `kernel_options`, which should match
    the tested template's); stop at the first divergent outcome (later ones would only echo
    it)."""
    example = Example(spec, ops)
    if base.exists():
        shutil.rmtree(base)
    kernel_stack = _lay_out(base / "kernel", spec, for_kernel=True)
    tested_stack = _lay_out(base / "tested", spec, for_kernel=False)
    lowers = list(tested_stack["lowers"])
    lowers_before = [raw_snapshot(p) for p in lowers]
    try:
        kernel_cm = _kernel(kernel_stack, kernel_options)
        tested_cm = mount_tested(tested_stack)
        with contextlib.ExitStack() as stack:
            stack.enter_context(kernel_cm)
            stack.enter_context(tested_cm)
            for step, op in enumerate(ops):
                if op[0] in ("remount", "rotate"):
                    stack.close()
                    if op[0] == "rotate":
                        _rotate(kernel_stack)
                        _rotate(tested_stack)
                    stack.enter_context(_kernel(kernel_stack, kernel_options))
                    stack.enter_context(mount_tested(tested_stack))
                    continue
                kernel_result = _apply_bounded(kernel_stack["merged"], op)
                tested_result = _apply_bounded(tested_stack["merged"], op)
                if kernel_result != tested_result:
                    example.divergences.append(Divergence(
                        "outcome", ",".join(map(str, op)), kernel_result, tested_result, step))
                    example.ops = ops[:step + 1]
                    break
            if not example.divergences:
                example.divergences += _compare_trees("view", snapshot(kernel_stack["merged"]),
                                                      snapshot(tested_stack["merged"]))
        if not example.divergences:
            example.divergences += _compare_trees("upper", _upper_view(kernel_stack["upper"]),
                                                  _upper_view(tested_stack["upper"]))
        for path, before in zip(lowers, lowers_before):
            example.divergences += _compare_trees("lower-modified", before, raw_snapshot(path))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return example
