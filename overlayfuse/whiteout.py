"""On-disk markers: whiteouts and opaque directories, in the kernel's and the OCI forms."""

from __future__ import annotations

import os
import stat

OCI_WHITEOUT_PREFIX = b".wh."
OCI_OPAQUE_MARKER = b".wh..wh..opq"
OPAQUE_XATTRS = (b"trusted.overlay.opaque", b"user.overlay.opaque")
WHITEOUT_MODE = stat.S_IFCHR  # chardev 0/0, mode 0000, as kernel overlayfs makes it


def is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def oci_target(name: bytes) -> bytes | None:
    """The name an OCI `.wh.NAME` entry hides, or None if `name` is not such an entry."""
    if name.startswith(OCI_WHITEOUT_PREFIX) and name != OCI_OPAQUE_MARKER:
        return name[len(OCI_WHITEOUT_PREFIX):]
    return None


def is_reserved_name(name: bytes) -> bool:
    """Names that would be read back as markers: they cannot be created through the mount."""
    return name.startswith(OCI_WHITEOUT_PREFIX)


def proc_path(fd: int, name: bytes | None = None) -> tuple[bytes, bool]:
    """(path, follow_symlinks) reaching the object behind an O_PATH fd, or `name` inside that
    directory, for calls that take no fd. The /proc magic link itself is followed (it names
    the exact inode); `name` is not."""
    if name is None:
        return b"/proc/self/fd/%d" % fd, True
    return b"/proc/self/fd/%d/%s" % (fd, name), False


def has_opaque_xattr(fd: int, name: bytes | None = None) -> bool:
    path, follow = proc_path(fd, name)
    for attr in OPAQUE_XATTRS:
        try:
            if os.getxattr(path, attr, follow_symlinks=follow) == b"y":
                return True
        except OSError:
            continue
    return False


def make_whiteout(dir_fd: int, name: bytes) -> None:
    os.mknod(name, WHITEOUT_MODE, os.makedev(0, 0), dir_fd=dir_fd)


def set_opaque(fd: int, name: bytes | None, xattr_prefix: bytes) -> None:
    path, follow = proc_path(fd, name)
    os.setxattr(path, xattr_prefix + b"opaque", b"y", follow_symlinks=follow)
