"""Directory renames with redirects (`redirect_dir`), against kernel overlayfs mounted with the
same option: the same results, the same view, the same upper dir on disk (redirect xattrs
included), the same inode numbers, and uppers that move between the two both ways."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from overlayfuse.compare.fsops import apply_all
from overlayfuse.compare.trees import raw_snapshot, snapshot
from overlayfuse.syscalls import RENAME_EXCHANGE
from rotation import run_rotations

LOWERS = [
    {   # top lower
        "a/d1/f": "file:1", "a/d1/sub/g": "file:2", "b": "dir", "c/x/h": "file:3",
        "m/k": "file:k", "emptyl": "dir", "wh/hidden": "file:hidden",
    },
    {   # bottom lower
        "a/d1/bottom": "file:b", "a/d1/sub/deep": "file:deep", "c/x/h2": "file:h2",
        "m/k2": "file:k2", "e/x": "dir", "e/x/in": "file:in",
    },
]
UPPER = {"a/d1/up": "file:up", "pure": "dir", "m/u": "file:u", "wh": "whiteout"}

SCENARIOS: dict[str, list[tuple]] = {
    "same-parent": [("rename", "a/d1", "a/d2"), ("listdir", "a"), ("listdir", "a/d2"),
                    ("listdir", "a/d2/sub"), ("read", "a/d2/bottom"), ("stat", "a/d1")],
    "cross-parent": [("rename", "a/d1", "b/d3"), ("listdir", "b/d3"), ("listdir", "a"),
                     ("read", "b/d3/sub/deep")],
    "twice": [("rename", "a/d1", "a/d2"), ("rename", "a/d2", "b/d3"), ("listdir", "b/d3")],
    "nested": [("rename", "a/d1", "b/d3"), ("rename", "c/x", "b/d3/sub/y"),
               ("listdir", "b/d3/sub/y"), ("rename", "b", "b2"), ("listdir", "b2/d3/sub"),
               ("read", "b2/d3/sub/y/h2")],
    "back-home": [("rename", "a/d1", "a/d2"), ("rename", "a/d2", "a/d1"), ("listdir", "a/d1")],
    "into-pure": [("rename", "a/d1", "pure/d"), ("listdir", "pure/d"), ("listdir", "pure")],
    "pure-into-merged": [("mkdir", "pure/n"), ("rename", "pure/n", "a/n"), ("listdir", "a/n")],
    "over-empty-merged": [("rename", "c/x", "emptyl"), ("listdir", "emptyl")],
    "over-whiteout": [("rename", "c/x", "wh"), ("listdir", "wh")],
    "old-name-reused": [("rename", "a/d1", "a/d2"), ("mkdir", "a/d1"), ("listdir", "a/d1"),
                        ("listdir", "a/d2")],
    "exchange": [("rename", "a/d1", "c/x", RENAME_EXCHANGE), ("listdir", "a/d1"),
                 ("listdir", "c/x")],
    "rmdir-after": [("rename", "c/x", "c/y"), ("unlink", "c/y/h"), ("unlink", "c/y/h2"),
                    ("rmdir", "c/y"), ("listdir", "c"), ("mkdir", "c/x"), ("listdir", "c/x")],
    "copy-up-inside": [("rename", "a/d1", "b/d3"), ("write", "b/d3/sub/deep", 0, "X"),
                       ("chmod", "b/d3/bottom", 0o600), ("listdir", "b/d3/sub"),
                       ("read", "b/d3/sub/deep"), ("create", "b/d3/sub/new", 0o644)],
    "merged-at-root": [("rename", "m", "m2"), ("listdir", "m2"), ("read", "m2/k2")],
    "bottom-only": [("rename", "e/x", "e/y"), ("rename", "e", "f"), ("listdir", "f/y")],
    "into-own-subtree": [("rename", "a/d1", "a/d1/sub/z"), ("rename", "a", "a/d1/q")],
    "refused-by-a-full-upper-dir": [("mkdir", "pure/x"), ("rename", "a/d1", "pure"),
                                    ("listdir", "a/d1")],
    "new-dirs": [("mkdir", "a/new"), ("mkdir", "pure/new"), ("mkdir", "c/x/new"),
                 ("rename", "a/new", "b/new")],
}


def _same_everywhere(kernel: dict, ofs: dict) -> None:
    assert snapshot(ofs["merged"]) == snapshot(kernel["merged"])


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_dir_renames_match_the_kernel(both, scenario: str) -> None:
    ops = SCENARIOS[scenario]
    with both(LOWERS, UPPER) as (kernel, ofs):
        kernel_results = apply_all(kernel["merged"], ops)
        ofs_results = apply_all(ofs["merged"], ops)
        assert ofs_results == kernel_results, list(zip(ops, kernel_results, ofs_results))
        _same_everywhere(kernel, ofs)
    assert raw_snapshot(ofs["upper"]) == raw_snapshot(kernel["upper"])


def _inos(merged: Path, paths: list[str]) -> list[int]:
    return [os.lstat(merged / path).st_ino for path in paths]


def test_a_renamed_dir_keeps_its_inode_number(make_stack, mount_ofs, mount_kernel) -> None:
    for kind, mount in (("kernel", mount_kernel), ("ofs", mount_ofs)):
        stack = make_stack(LOWERS, UPPER, name=kind)
        merged = Path(stack["merged"])
        with mount(stack):
            before = _inos(merged, ["a/d1", "a/d1/sub", "c/x", "a/d1/f"])
            os.rename(merged / "a/d1", merged / "b/d3")
            os.rename(merged / "c/x", merged / "b/d3/sub/y")
            after = _inos(merged, ["b/d3", "b/d3/sub", "b/d3/sub/y", "b/d3/f"])
        assert after == before
        with mount(stack):
            assert _inos(merged, ["b/d3", "b/d3/sub", "b/d3/sub/y", "b/d3/f"]) == before


@pytest.mark.parametrize("writer", ["kernel", "overlayfuse"])
def test_redirects_move_between_kernel_and_overlayfuse(writer: str, make_stack, mount_ofs,
                                                       mount_kernel) -> None:
    stack = make_stack(LOWERS, UPPER)
    first, second = (mount_kernel, mount_ofs) if writer == "kernel" else (mount_ofs,
                                                                         mount_kernel)
    ops = [op for op in SCENARIOS["nested"] if op[0] == "rename"] + [
        ("rename", "m", "m2"), ("rename", "e/x", "pure/ex"), ("rename", "emptyl", "wh")]
    moved = ["b2/d3", "b2/d3/sub", "b2/d3/sub/y", "m2", "pure/ex", "wh"]
    with first(stack):
        assert apply_all(stack["merged"], ops) == ["ok"] * len(ops)
        view = snapshot(stack["merged"])
        inos = _inos(Path(stack["merged"]), moved)
    with second(stack):
        assert snapshot(stack["merged"]) == view
        assert _inos(Path(stack["merged"]), moved) == inos


@pytest.mark.parametrize("mode", ["follow", "off", "nofollow"])
def test_modes_that_make_no_redirects(mode: str, make_stack, mount_ofs, mount_kernel) -> None:
    """`follow` and `off` read redirects but refuse to make them (EXDEV: `mv` copies);
    `nofollow` refuses (EPERM) to look up a dir whose redirect leads to something, and
    leaves it out of its parent's listing, all as the kernel does."""
    ops = [("rename", "c/x", "c/y"), ("rename", "b/d3", "b/d4"), ("rename", "pure", "pure2"),
           ("stat", "b/d3"), ("listdir", "m2"), ("listdir", "c"), ("listdir", ""),
           ("listdir", "b")]
    outcomes = {}
    for kind, mount in (("kernel", mount_kernel), ("ofs", mount_ofs)):
        stack = make_stack(LOWERS, UPPER, name=kind)
        with mount_kernel(stack):       # an upper with redirects, as the kernel writes it
            apply_all(stack["merged"], [("rename", "a/d1", "b/d3"), ("rename", "m", "m2")])
        with mount(stack, options=[f"redirect_dir={mode}"]):
            outcomes[kind] = apply_all(stack["merged"], ops)
            if mode != "nofollow":
                outcomes[kind].append(snapshot(stack["merged"]))
    assert outcomes["ofs"] == outcomes["kernel"]
    expected = ["EXDEV", "EPERM" if mode == "nofollow" else "EXDEV", "ok"]
    assert outcomes["ofs"][:3] == expected


def test_a_redirect_longer_than_redirect_max_is_refused(both) -> None:
    """An absolute redirect longer than the kernel's redirect_max (256): EXDEV, and the view
    unchanged. (The kernel copies the dir and its parents up before it finds out; overlayfuse
    checks first and copies nothing, so the upper dirs are not compared.)"""
    long_names = ["n" * 60 + str(i) for i in range(5)]
    deep = "/".join(long_names)
    lowers = [{f"{deep}/d/f": "file:f", "t": "dir"}]
    ops = [("rename", f"{deep}/d", "t/d"), ("rename", long_names[0], "t/short"),
           ("listdir", "t")]
    with both(lowers, {}) as (kernel, ofs):
        kernel_results = apply_all(kernel["merged"], ops)
        assert apply_all(ofs["merged"], ops) == kernel_results
        assert kernel_results[0] == "EXDEV" and kernel_results[1] == "ok"
        _same_everywhere(kernel, ofs)


def test_layer_rotation(tmp_path: Path, mount_ofs, mount_kernel) -> None:
    """Rename dirs, then mount again with yesterday's upper as the top lower layer and a fresh
    upper, and rename again: redirects are followed through a lower layer as the kernel does."""
    rounds = [
        [("rename", "a/d1", "b/d3"), ("rename", "c/x", "c/y"), ("rename", "m", "m2")],
        [("rename", "b/d3", "b/d4"), ("rename", "b", "bb"), ("rename", "c/y", "bb/d4/z"),
         ("listdir", "bb/d4"), ("listdir", "bb/d4/z"), ("read", "bb/d4/sub/deep")],
        [("rename", "bb/d4/sub", "sub"), ("listdir", "sub"), ("rmdir", "c")],
    ]
    results = {kind: run_rotations(
        tmp_path / kind, LOWERS, UPPER, rounds, mount,
        lambda stack, ops: (apply_all(stack["merged"], ops), snapshot(stack["merged"])))
        for kind, mount in (("kernel", mount_kernel), ("ofs", mount_ofs))}
    assert results["ofs"] == results["kernel"]
    assert all(result.startswith("ok") for op_results, _ in results["ofs"]
               for result in op_results)
