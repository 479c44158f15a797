"""Reads whose data must come from the disk: a small file's is read in the request's own task
(the hand-off to a worker thread cost more than the read: docs/benchmarks.md), a large
file's in a worker thread so that other requests go on meanwhile. Seen from outside as the
daemon's threads, with the lower files dropped from the page cache first."""

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
