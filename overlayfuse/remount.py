"""`mount -o remount,...`: change the VFS flags of a live overlayfuse mount in place.

mount(8) runs mount.fuse3, which starts `overlayfuse SOURCE MERGED -o ...,remount,...` again.
Like kernel overlayfs on a remount, only the VFS flags count (ro/rw, nosuid, atime, ...); the
layers cannot change. The kernel enforces the flags itself (a read-only superblock refuses
every write with EROFS before the daemon sees it), so the running daemon need not know.
"""

from __future__ import annotations

import errno
import os

from .errors import MountError
from .options import MountOptions
from .syscalls import remount as remount_syscall

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_SYNCHRONOUS = 1, 2, 4, 8, 16
MS_DIRSYNC, MS_NOATIME, MS_NODIRATIME = 128, 1024, 2048
MS_RELATIME, MS_STRICTATIME, MS_LAZYTIME = 1 << 21, 1 << 24, 1 << 25

# flag name -> (bits it sets, bits it clears), as util-linux maps them
FLAG_BITS: dict[str, tuple[int, int]] = {
    "ro": (MS_RDONLY, 0), "rw": (0, MS_RDONLY),
    "nosuid": (MS_NOSUID, 0), "suid": (0, MS_NOSUID),
    "nodev": (MS_NODEV, 0), "dev": (0, MS_NODEV),
    "noexec": (MS_NOEXEC, 0), "exec": (0, MS_NOEXEC),
    "sync": (MS_SYNCHRONOUS, 0), "async": (0, MS_SYNCHRONOUS),
    "dirsync": (MS_DIRSYNC, 0),
    "noatime": (MS_NOATIME, 0), "atime": (0, MS_NOATIME),
    "nodiratime": (MS_NODIRATIME, 0), "diratime": (0, MS_NODIRATIME),
    "relatime": (MS_RELATIME, 0), "norelatime": (0, MS_RELATIME),
    "strictatime": (MS_STRICTATIME, 0), "nostrictatime": (0, MS_STRICTATIME),
    "lazytime": (MS_LAZYTIME, 0), "nolazytime": (0, MS_LAZYTIME),
}

# A name no one sets: removing it asks the daemon whether it can write at all (EROFS if its
# stack is read-only, ENODATA if not) without changing anything.
PROBE_XATTR = "trusted.overlayfuse.remount-probe"


def mount_flags(vfs_flags: tuple[str, ...]) -> int:
    flags = 0
    for name in vfs_flags:
        set_bits, clear_bits = FLAG_BITS[name]
        flags = (flags | set_bits) & ~clear_bits
    return flags


def mounted_at(mountpoint: str) -> tuple[str, set[str]] | None:
    """(filesystem type, superblock options) of the topmost mount at `mountpoint`."""
    from .mounts import _unescape   # only on a remount: the mount path stays light
    found = None
    with open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            fields = line.split()
            if _unescape(fields[4]) == mountpoint:
                after = fields[fields.index("-") + 1:]
                found = (after[0], set(after[2].split(",")))
    return found


def remount(options: MountOptions) -> None:
    mountpoint = os.path.realpath(options.mountpoint)
    mount = mounted_at(mountpoint)
    if mount is None:
        raise MountError(errno.EINVAL, "cannot remount: not a mount point", mountpoint)
    fstype, super_options = mount
    if fstype != "fuse" and not fstype.startswith("fuse."):
        raise MountError(errno.EINVAL, f"cannot remount: a {fstype} mount, not overlayfuse",
                         mountpoint)
    flags = mount_flags(options.vfs_flags)
    _remount(mountpoint, flags)
    if "ro" in super_options and not flags & MS_RDONLY and not _daemon_can_write(mountpoint):
        _remount(mountpoint, flags | MS_RDONLY)
        raise MountError(errno.EROFS, "cannot remount read-write: mounted without a writable "
                                      "upper layer", mountpoint)


def _remount(mountpoint: str, flags: int) -> None:
    try:
        remount_syscall(mountpoint, flags)
    except OSError as e:
        hint = " (remounting needs root)" if e.errno == errno.EPERM else ""
        raise MountError(e.errno or errno.EIO, f"cannot remount{hint}", mountpoint) from None


def _daemon_can_write(mountpoint: str) -> bool:
    try:
        os.removexattr(mountpoint, PROBE_XATTR)
    except OSError as e:
        return e.errno != errno.EROFS
    return True
