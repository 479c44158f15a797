"""Metadata-only copies without a mount: which files are asked for the marker, how a lookup
finds a marked file's data, and the two halves of its copy-up (metadata, then data)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import trio

from overlayfuse import metacopy
from unit_stack import core

MARKER = "user.overlay.metacopy"        # read in both namespaces; this one needs no root


def _stub(path: Path, size: int, redirect: str | None = None) -> None:
    """A metadata-only copy as the kernel writes one: the size, no data, the marker."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.truncate(size)
    os.setxattr(path, MARKER, b"")
    if redirect is not None:
        os.setxattr(path, "user.overlay.redirect", redirect.encode())


def _stat(size: int, blocks: int, mode: int = 0o100644) -> os.stat_result:
    return os.stat_result((mode, 1, 0, 1, 0, 0, size, 0, 0, 0), {"st_blocks": blocks})


@pytest.mark.parametrize("size, blocks, small_too, asked", [
    (300_000, 8, False, True),      # holes: may be one, and is asked in every mode
    (300_000, 600, False, False),   # all its data
    (100, 8, False, False),         # one block: data, or a marked file's xattrs
    (100, 8, True, True),
    (0, 0, True, True),
    (5000, 16, True, False),        # more blocks than xattrs take: data
])
def test_only_files_that_may_be_marked_are_asked(size: int, blocks: int, small_too: bool,
                                                 asked: bool) -> None:
    assert metacopy.may_be_marked(_stat(size, blocks), small_too) is asked
    assert not metacopy.may_be_marked(_stat(size, 0, mode=0o120777), True)   # a symlink


def test_a_marked_upper_file_reads_from_the_lower_file(tmp_path: Path) -> None:
    data = b"lower data " * 1000
    with core(tmp_path, [{"d/f": "file:x"}], options="metacopy=on") as ov:
        lower = Path(ov.paths["lowers"][0]) / "d/f"
        lower.write_bytes(data)
        _stub(Path(ov.paths["upper"]) / "d/f", len(data))
        node = ov.node("d/f")
        assert node.in_upper and node.lower_data is not None
        assert node.lower_data.path == b"d/f" and node.lower_data.layer is ov.tree.lower_layers[0]
        assert ov.tree.stat(node).st_blocks == os.lstat(lower).st_blocks
        fd = ov.tree.open_lower_data(node.lower_data, os.O_RDONLY)
        try:
            assert os.read(fd, len(data) + 1) == data
        finally:
            os.close(fd)


def test_the_data_is_found_past_marked_files_and_through_redirects(tmp_path: Path) -> None:
    """The upper `f` (no redirect) is above yesterday's upper, where `f` is marked and was
    renamed from `g`: its data is `g` in the bottom layer."""
    lowers = [{"d": "dir"}, {"d/g": "file:data of g", "d/f": "file:not this"}]
    with core(tmp_path, lowers, {"d": "dir"}, options="metacopy=on") as ov:
        _stub(Path(ov.paths["lowers"][0]) / "d/f", 9, redirect="g")
        _stub(Path(ov.paths["upper"]) / "d/f", 9)
        data = ov.node("d/f").lower_data
        assert data is not None and (data.layer, data.path) == (ov.tree.lower_layers[1], b"d/g")
        _stub(Path(ov.paths["upper"]) / "moved", 9, redirect="/d/f")    # an absolute one
        data = ov.node("moved").lower_data
        assert data is not None and (data.layer, data.path) == (ov.tree.lower_layers[1], b"d/g")


@pytest.mark.parametrize("below", [{}, {"d/f": "dir"}, {"d/f": "whiteout"}])
def test_a_marked_file_without_data_below_is_an_io_error(tmp_path: Path, below: dict) -> None:
    if below.get("d/f") == "whiteout" and os.geteuid() != 0:
        pytest.skip("a chardev whiteout needs root")
    with core(tmp_path, [{"d": "dir", **below}], {"d": "dir"}, options="metacopy=on") as ov:
        _stub(Path(ov.paths["upper"]) / "d/f", 9)
        with pytest.raises(OSError) as info:
            ov.node("d/f")
        assert info.value.errno == errno.EIO


def test_without_metacopy_a_marked_file_is_refused(tmp_path: Path) -> None:
    with core(tmp_path, [{"f": "file:x" * 9000}]) as ov:
        _stub(Path(ov.paths["upper"]) / "f", 9000)
        with pytest.raises(OSError) as info:
            ov.node("f")
        assert info.value.errno == errno.EPERM


def test_metadata_then_data(tmp_path: Path) -> None:
    data = b"0123456789" * 20_000
    with core(tmp_path, [{"f": "file:x"}], options="metacopy=on") as ov:
        lower = Path(ov.paths["lowers"][0]) / "f"
        lower.write_bytes(data)
        os.utime(lower, ns=(10**18, 10**18))
        upper = Path(ov.paths["upper"]) / "f"
        assert ov.copy_up is not None
        node = ov.node("f")
        trio.run(ov.copy_up.ensure_upper_metadata, node)
        assert node.in_upper and node.lower_data is not None
        assert os.lstat(upper).st_size == len(data) and os.lstat(upper).st_blocks <= 8
        assert os.lstat(upper).st_mtime_ns == 10**18
        assert MARKER in os.listxattr(upper) or "trusted.overlay.metacopy" in os.listxattr(upper)
        trio.run(ov.copy_up.ensure_upper, node)
        assert node.lower_data is None
        assert upper.read_bytes() == data and lower.read_bytes() == data
        assert not {MARKER, "trusted.overlay.metacopy"} & set(os.listxattr(upper))
        assert os.lstat(upper).st_mtime_ns == 10**18
        assert ov.node("f").lower_data is None
