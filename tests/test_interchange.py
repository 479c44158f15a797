"""Layers move freely between overlayfuse and kernel overlayfs: an upper dir written by one
mounts under the other and shows the same tree (names, types, modes, owners, sizes, contents,
link targets, user xattrs)."""

from __future__ import annotations

import os

import pytest

from overlayfuse.compare.trees import snapshot
from overlayfuse.compare.fsops import apply_all
from test_write_semantics import DIR_SCENARIOS, LOWERS, SCENARIOS, UPPER, _expand

SKIP = {"rename-exchange", "link", "rename", "rename-into-dir", "unlink-mkdir", "unlink-symlink",
        "unlink-recreate", "rename-noreplace"}


def _mixed_operations() -> list[tuple]:
    """Every scenario, each on fresh names, in one long sequence."""
    ops: list[tuple] = []
    for name, scenario in SCENARIOS.items():
        for target in ("bottom", "over", "d/a", "deep/er/est", "sym"):
            if name not in SKIP:
                ops += _expand(scenario, target)
    ops += _expand(SCENARIOS["unlink-recreate"], "d/b")
    ops += _expand(SCENARIOS["unlink-mkdir"], "xa")
    ops += _expand(SCENARIOS["rename"], "over")
    ops += [("mkdir", "fresh", 0o750), ("create", "fresh/f", 0o600), ("write", "fresh/f", 0, "x"),
            ("symlink", "fresh/f", "fresh/l"), ("link", "fresh/f", "fresh/h"),
            ("setxattr", "fresh", "user.k", "v"), ("mknod", "fresh/p", "fifo")]
    for name in ("rmdir-emptied", "rmdir-lower-only", "rename-pure-into-merged", "opaque-dir",
                 "mkdir-over-whiteout", "hardlink-break", "rename-pure-over-empty-lower"):
        ops += DIR_SCENARIOS[name]
    return ops


@pytest.mark.parametrize("writer", ["overlayfuse", "kernel"])
def test_upper_written_by_one_mounts_in_the_other(writer: str, make_stack, mount_ofs,
                                                  mount_kernel) -> None:
    stack = make_stack(LOWERS, UPPER)
    first, second = (mount_ofs, mount_kernel) if writer == "overlayfuse" else (mount_kernel,
                                                                               mount_ofs)
    with first(stack):
        results = apply_all(stack["merged"], _mixed_operations())
        assert results.count("ok") > len(results) // 3
        view = snapshot(stack["merged"])
    with second(stack):
        assert snapshot(stack["merged"]) == view
    # And back again: nothing changes by merely mounting.
    with first(stack):
        assert snapshot(stack["merged"]) == view
    assert os.path.isdir(stack["work"])
