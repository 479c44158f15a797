"""What goes to a worker thread: a read whose data must come from the disk, and a copy-up,
but for a small file (the hand-off to a thread and back cost more than the work itself:
docs/benchmarks.md), so that other requests go on meanwhile. Seen from outside as the
daemon's threads (trio keeps an idle worker thread for a while)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from overlayfuse import Overlay

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")

SMALL = "s" * 10_000
BIG = "".join(f"{n:07d}\n" for n in range(128 * 1024))     # 1 MiB


def _evict(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def test_a_cold_small_file_is_read_without_a_worker_thread_a_large_one_with(
        make_stack: Callable[..., dict], mount_ofs: Callable[..., Overlay]) -> None:
    stack = make_stack([{"small": f"file:{SMALL}", "big": f"file:{BIG}"}])
    lower = Path(stack["lowers"][0])
    with mount_ofs(stack) as overlay:
        assert overlay.pid is not None
        merged = overlay.merged
        os.stat(merged / "small")
        os.stat(merged / "big")
        before = _threads(overlay.pid)
        _evict(lower / "small")
        assert (merged / "small").read_text() == SMALL, "wrong data"
        assert _threads(overlay.pid) == before
        _evict(lower / "big")
        assert (merged / "big").read_text() == BIG, "wrong data"
        assert _threads(overlay.pid) > before


def test_a_small_file_is_copied_up_without_a_worker_thread_a_large_one_with(
        make_stack: Callable[..., dict], mount_ofs: Callable[..., Overlay]) -> None:
    stack = make_stack([{"small": f"file:{SMALL}", "big": f"file:{BIG}"}])
    with mount_ofs(stack) as overlay:
        assert overlay.pid is not None
        merged = overlay.merged
        before = _threads(overlay.pid)
        with open(merged / "small", "a") as f:
            f.write("+")
        assert _threads(overlay.pid) == before
        assert (Path(stack["upper"]) / "small").read_text() == SMALL + "+", "not copied up"
        with open(merged / "big", "a") as f:
            f.write("+")
        assert _threads(overlay.pid) > before
        assert (Path(stack["upper"]) / "big").read_text() == BIG + "+", "not copied up"
