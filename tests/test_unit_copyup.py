"""Copy-up without a mount: the staged copy, its origin, and what other requests may do to the
tree while the data is copied in a worker thread."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
import trio

from overlayfuse import copyup, origin
from overlayfuse.syscalls import name_to_handle_at
from unit_stack import core

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="origins live in trusted xattrs")


def _origin_handle(path: Path) -> bytes:
    decoded = origin.decode(os.getxattr(path, origin.TRUSTED_ORIGIN, follow_symlinks=False))
    assert decoded is not None
    return decoded[2]


def _handle(path: Path) -> bytes:
    with open(path, "rb") as file:
        return name_to_handle_at(file.fileno(), None)[1]


@needs_root
async def test_origin_names_the_copied_file_when_dir_fds_are_recycled_during_the_copy(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """While the data is copied in a worker thread, other requests go on: here they open
    other dirs, which (with a cache of one dir fd) closes the fd of the copied file's dir, and
    open a dir whose fd takes the same number and holds a file of the same name. The origin
    recorded must still be the copied file's."""
    lowers = [{"d/f": "file:the file", "decoy/f": "file:another file", "e/g": "file:g"}]
    with core(tmp_path, lowers, max_dir_fds=1) as ov:
        node = ov.node("d/f")
        in_thread, release = threading.Event(), threading.Event()
        stage = copyup._stage_regular

        def paused_stage(*args: object) -> None:
            in_thread.set()
            release.wait(10)
            stage(*args)

        monkeypatch.setattr(copyup, "_stage_regular", paused_stage)
        decoy_fd: int | None = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ov.copy_up.ensure_upper, node)
            await trio.to_thread.run_sync(in_thread.wait, 10)
            ov.node("e/g")                  # opens e's dir fd: d's is closed
            decoy_fd = os.open(ov.paths["lowers"][0] / "decoy", os.O_PATH | os.O_DIRECTORY)
            release.set()
        os.close(decoy_fd)
        upper_copy = ov.paths["upper"] / "d/f"
        assert upper_copy.read_text() == "the file"
        assert _origin_handle(upper_copy) == _handle(ov.paths["lowers"][0] / "d/f")


def test_a_copy_up_tells_the_kernel_the_attributes_changed(tmp_path: Path) -> None:
    """A copy-up changes attributes behind the kernel's back (a merged dir's nlink, the
    parent's ctime): the callback given to CopyUp hears of the node and its parent."""
    with core(tmp_path, [{"d/f": "file:f"}]) as ov:
        node = ov.node("d/f")
        trio.run(ov.copy_up.ensure_upper, node)
        parent = ov.node("d")
        assert node.in_upper and parent.in_upper
        assert ov.attrs_changed.count(node) == 1 and parent in ov.attrs_changed
