"""The mount's atime policy (noatime, relatime = the default, strictatime, nodiratime),
applied to the upper layer as kernel overlayfs applies it.

The kernel marks every FUSE inode S_NOATIME: atime through the mount is whatever the daemon
reports, and it moves only when the daemon reads the upper file or dir. Like the kernel,
which reads the upper layer through a private copy of its mount stripped of its atime flags,
the daemon reads it through a detached copy of its mount that carries the overlay's policy
(`layers`), so the upper filesystem's own mount options do not count. Reads the kernel serves
from its page cache never reach the daemon: a file is opened without keeping the cache when
the policy would move its atime on the next read.
"""

from __future__ import annotations

import os
import time
from collections import namedtuple

from .remount import MS_NOATIME, MS_NODIRATIME, MS_STRICTATIME, mount_flags
from .syscalls import (MOUNT_ATTR_NOATIME, MOUNT_ATTR_NODIRATIME, MOUNT_ATTR_RELATIME,
                       MOUNT_ATTR_STRICTATIME)

RELATIME_MAX_AGE_NS = 24 * 3600 * 10**9     # relatime still updates an atime a day old


class AtimePolicy(namedtuple("AtimePolicy", "noatime strictatime nodiratime by_mount",
                             defaults=(False, False, False, True))):
    """noatime, strictatime, nodiratime: the flags in force. by_mount: False where no copy of
    the upper mount carries the policy (not root)."""

    __slots__ = ()

    @classmethod
    def from_flags(cls, vfs_flags: tuple[str, ...]) -> AtimePolicy:
        flags = mount_flags(vfs_flags)
        strict = bool(flags & MS_STRICTATIME)      # overrides noatime, as in mount(2)
        return cls(noatime=bool(flags & MS_NOATIME) and not strict, strictatime=strict,
                   nodiratime=bool(flags & MS_NODIRATIME))

    @property
    def mount_attrs(self) -> int:
        """The policy as mount_setattr(2) attributes."""
        mode = MOUNT_ATTR_NOATIME if self.noatime else (
            MOUNT_ATTR_STRICTATIME if self.strictatime else MOUNT_ATTR_RELATIME)
        return mode | (MOUNT_ATTR_NODIRATIME if self.nodiratime else 0)

    @property
    def touches_dirs(self) -> bool:
        return not (self.noatime or self.nodiratime)

    def read_would_update(self, st: os.stat_result) -> bool:
        """Whether a read of a file with this stat moves its atime (the kernel's
        atime_needs_update and relatime_need_update). Unknown, and so False, where the
        upper filesystem's own mount options rule."""
        due = self.next_update(st)
        return due is not None and due <= time.time_ns()

    def next_update(self, st: os.stat_result) -> int | None:
        """From when (ns since the epoch) a read of an object with this stat moves its atime,
        as long as it does not change; None: never (or unknown, as above)."""
        if self.noatime or not self.by_mount:
            return None
        atime = st.st_atime_ns
        if self.strictatime or atime <= st.st_mtime_ns or atime <= st.st_ctime_ns:
            return 0
        return atime + RELATIME_MAX_AGE_NS
