"""Which times each operation changes, as kernel overlayfs shows them: the mtime and ctime
(and nlink, size) of the object, its directory, a sibling, another directory and the root,
seen through the mount right after the operation. A copy-up changes its parent's ctime but
not its mtime; a cached attribute that the daemon forgets to invalidate shows up here."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

LOWERS = [{"d/f": "file:abc", "d/g": "file:g", "d/sub": "dir", "e": "dir", "top": "file:t",
           "d/sym": "symlink:f"}]
# The dirs copied up first, by the implementation under test: an upper dir made by hand has
# no origin xattr, which the kernel then adds at the first lookup (changing ctimes).
SETUPS = {"lower-dirs": lambda m: None,
          "upper-dirs": lambda m: ((m / "d/u").touch(), (m / "e/v").touch())}
WATCHED = (".", "d", "d/f", "d/g", "e")
# Longer than the filesystem's timestamp granularity, so that a change always shows.
TICK = 0.03

OPERATIONS = {
    "create": lambda m: (m / "d/new").touch(),
    "unlink": lambda m: os.unlink(m / "d/f"),
    "mkdir": lambda m: os.mkdir(m / "d/nd"),
    "rmdir": lambda m: os.rmdir(m / "d/sub"),
    "rename": lambda m: os.rename(m / "d/f", m / "e/f2"),
    "rename-over": lambda m: os.rename(m / "d/f", m / "d/g"),
    "link": lambda m: os.link(m / "d/f", m / "e/l"),
    "symlink": lambda m: os.symlink("x", m / "d/s2"),
    "mknod": lambda m: os.mkfifo(m / "d/fifo"),
    "chmod": lambda m: os.chmod(m / "d/f", 0o600),
    "chown": lambda m: os.chown(m / "d/f", 1, 1),
    "chmod-dir": lambda m: os.chmod(m / "d", 0o700),
    "write": lambda m: (m / "d/f").write_text("zz"),
    "truncate": lambda m: os.truncate(m / "d/f", 1),
    "truncate-same-size": lambda m: os.truncate(m / "d/f", 3),
    "utime": lambda m: os.utime(m / "d/f", (1, 2)),
    "setxattr": lambda m: os.setxattr(m / "d/f", "user.a", b"1"),
    "open-rdwr": lambda m: os.close(os.open(m / "d/f", os.O_RDWR)),
    "open-trunc": lambda m: os.close(os.open(m / "d/f", os.O_WRONLY | os.O_TRUNC)),
    "read": lambda m: (m / "d/f").read_bytes(),
}


def _attributes(merged: Path) -> dict[str, tuple[int, ...] | None]:
    seen: dict[str, tuple[int, ...] | None] = {}
    for rel in WATCHED:
        try:
            st = os.lstat(merged / rel)
        except FileNotFoundError:
            seen[rel] = None
        else:
            seen[rel] = (st.st_mtime_ns, st.st_ctime_ns, st.st_nlink, st.st_size)
    return seen


def _changes(merged: Path, operation) -> dict[str, str]:
    """For each watched object, which of mtime, ctime, nlink and size changed (M, C, N, S)."""
    before = _attributes(merged)
    time.sleep(TICK)
    operation(merged)
    after = _attributes(merged)
    changes = {}
    for rel in WATCHED:
        old, new = before[rel], after[rel]
        if old is None or new is None:
            changes[rel] = "gone" if new is None else "new"
        else:
            changes[rel] = "".join(flag if a != b else "-" for flag, a, b in zip("MCNS", old, new))
    return changes


@pytest.mark.parametrize("setup", SETUPS)
@pytest.mark.parametrize("operation", OPERATIONS)
def test_an_operation_changes_the_times_the_kernel_changes(both, operation: str,
                                                           setup: str) -> None:
    with both(LOWERS) as (kernel, ofs):
        for stack in (kernel, ofs):
            SETUPS[setup](stack["merged"])
        expected = _changes(kernel["merged"], OPERATIONS[operation])
        assert _changes(ofs["merged"], OPERATIONS[operation]) == expected
