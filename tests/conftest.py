from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from layerspec import build_stack
from overlayfuse import mounts

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


@pytest.fixture
def make_stack(tmp_path: Path) -> Callable[..., dict]:
    """make_stack(lowers, upper=None, name="s") lays out a stack under tmp_path/name."""
    def make(lowers: list[dict[str, str]], upper: dict[str, str] | None = None,
             name: str = "s") -> dict:
        return build_stack(tmp_path / name, lowers, upper)
    return make


@pytest.fixture
def mount_ofs(tmp_path: Path) -> Callable[..., contextlib.AbstractContextManager]:
    """mount_ofs(stack, read_only=False, extra=()) mounts overlayfuse on stack["merged"]."""
    def mount(stack: dict, read_only: bool = False, extra: tuple[str, ...] = ()
              ) -> contextlib.AbstractContextManager:
        return mounts.overlayfuse(stack["lowers"], None if read_only else stack["upper"],
                                  stack["work"], stack["merged"], extra=extra,
                                  log_file=tmp_path / "overlayfuse.log")
    return mount


@pytest.fixture
def kernel_available() -> None:
    reason = mounts.kernel_overlay_available()
    if reason is not None:
        pytest.skip(reason)


@pytest.fixture
def mount_kernel(kernel_available: None) -> Callable[..., contextlib.AbstractContextManager]:
    def mount(stack: dict, read_only: bool = False) -> contextlib.AbstractContextManager:
        lowers = stack["lowers"]
        if read_only and len(lowers) == 1:
            # The kernel wants two lowerdirs for a read-only mount; an empty one changes nothing.
            empty = stack["base"] / "empty-lower"
            empty.mkdir(exist_ok=True)
            lowers = [*lowers, empty]
        return mounts.kernel_overlay(lowers, None if read_only else stack["upper"],
                                     stack["work"], stack["merged"])
    return mount


@pytest.fixture
def both(make_stack: Callable[..., dict], mount_ofs: Callable[..., object],
         mount_kernel: Callable[..., object]) -> Callable[..., contextlib.AbstractContextManager]:
    """both(lowers, upper=None, read_only=False) builds the same stack twice and mounts kernel
    overlayfs on one and overlayfuse on the other; yields (kernel_stack, ofs_stack)."""
    @contextlib.contextmanager
    def run(lowers: list[dict[str, str]], upper: dict[str, str] | None = None,
            read_only: bool = False) -> Iterator[tuple[dict, dict]]:
        kernel_stack = make_stack(lowers, upper, name="kernel")
        ofs_stack = make_stack(lowers, upper, name="ofs")
        with mount_kernel(kernel_stack, read_only=read_only), \
                mount_ofs(ofs_stack, read_only=read_only):
            yield kernel_stack, ofs_stack
    return run


@pytest.fixture(autouse=True, scope="session")
def no_leaked_mounts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    # Only this session's temporary tree: other test sessions may be running on the machine
    # at the same time, and their mounts are theirs.
    base = str(tmp_path_factory.getbasetemp().resolve()) + "/"
    yield
    with open("/proc/self/mountinfo") as mountinfo:
        targets = [mounts._unescape(line.split()[4]) for line in mountinfo]
    leaked = [path for path in targets if path.startswith(base)]
    for path in leaked:
        mounts.unmount(path)
    assert not leaked, f"tests left mounts behind: {leaked}"
