"""Metadata-only copies in kernel overlayfs's on-disk format (`overlay.metacopy`).

With metacopy=on, a change of a lower regular file's metadata (owner, mode, times, xattrs, a
hard link, a rename) copies up an upper file with that metadata, the full size and no data,
marked `overlay.metacopy` (an empty value); its data stays in the lower file, found the way
a lookup finds it (below the upper file's name, or where its `overlay.redirect` points). The
first open for writing copies the data in and removes the marker.

Such a file has no data blocks: only the blocks of its xattrs, where the filesystem keeps
them outside the inode (ext4: one block). So only a file with holes, or one with no more blocks
than that, is asked for the marker; a lookup of any other file pays no extra system call. A
mount without metacopy=on asks only files with holes: there a marked file is refused (EPERM,
as by the kernel) rather than shown without its data, except a small one (docs/behaviour.md).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Collection

from .syscalls import proc_path, xattr_names

METACOPY_XATTRS = (b"trusted.overlay.metacopy", b"user.overlay.metacopy")


XATTR_BLOCKS = 8         # 512-byte units: one 4 KiB block


def may_be_marked(st: os.stat_result, small_too: bool) -> bool:
    """Whether the file could be a metadata-only copy: a regular file with holes, or (with
    `small_too`) one with no more blocks than its xattrs may take, whatever its size."""
    if not stat.S_ISREG(st.st_mode):
        return False
    blocks = st.st_blocks
    return blocks * 512 < st.st_size or (small_too and blocks <= XATTR_BLOCKS)


def is_marked(present: Collection[bytes]) -> bool:
    """Whether an object whose xattr names are `present` is a metadata-only copy."""
    return any(attr in present for attr in METACOPY_XATTRS)


def mark(fd: int, xattr_prefix: bytes) -> None:
    path, follow = proc_path(fd)
    os.setxattr(path, xattr_prefix + b"metacopy", b"", follow_symlinks=follow)


def unmark(fd: int) -> None:
    """Remove the marker, in whichever namespace it was written: the data is in place."""
    path, follow = proc_path(fd)
    for attr in METACOPY_XATTRS:
        if attr in xattr_names(fd):
            os.removexattr(path, attr, follow_symlinks=follow)
